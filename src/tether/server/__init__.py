"""The tether server: operator API, agent gateway, dispatch and storage."""
