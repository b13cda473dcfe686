"""Core ``rick`` sub-commands, one module each, imported only when used."""
