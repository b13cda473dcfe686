"""rick's interfaces for other programs: the WebSocket proxy of live quotes and
order events (:mod:`rick_core.api.ws`, protocol in docs/websocket-protocol.md)."""
