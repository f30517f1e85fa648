"""Serving the agent to devices that cannot reach any package index."""
