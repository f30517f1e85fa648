"""The operator REST API under /api/v1, and the agents' registration call."""
