"""The `maillage` command-line tool: runs an embedded federation (nats-server, registry, gateway, nodes)."""
