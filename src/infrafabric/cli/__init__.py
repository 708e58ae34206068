"""``ifab``: the InfraFabric command line (a client of the public API)."""
