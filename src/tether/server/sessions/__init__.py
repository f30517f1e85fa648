"""Sessions: shells, port forwards and file copies relayed through the agents' links."""
