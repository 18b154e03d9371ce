"""How users reach bnsweep: HTTP API, persistence, client and CLI."""
