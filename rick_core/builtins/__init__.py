"""Plugins that ship with rick-core. They are registered through the same hooks
as any third-party plugin, so our own code exercises the contract."""
