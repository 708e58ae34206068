"""The fabric server: REST under ``/v1`` and a WebSocket for the bus, over one service."""
