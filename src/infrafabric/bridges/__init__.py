"""Bridges: other protocols' clients joining the fabric (MCP first)."""
