"""The operator CLI, ``tether``. It talks to the server only through the REST API."""
