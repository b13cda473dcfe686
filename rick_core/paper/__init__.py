"""The built-in paper broker: a simulated market and account, registered as the
``paper`` broker through the same hook as any broker plugin."""
