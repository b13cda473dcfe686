"""rick-oanda: the OANDA v20 broker plugin for rick.

Configure a broker with ``kind = "oanda"`` (see :mod:`rick_oanda.options`),
store its token with ``rick creds set <name> token``, and the engine trades
through :class:`rick_oanda.broker.OandaBroker`. :mod:`rick_oanda.fake` is a
loopback v20 server for tests and rehearsals.
"""

__version__ = "0.1.0"
