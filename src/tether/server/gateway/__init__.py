"""The agents' side of the server: their WebSocket endpoint and who is connected."""
