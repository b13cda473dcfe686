"""The trio runtime: brokers, the order manager and strategy hosting."""
