"""rick: a plugin-based trading framework.

Importing this package must stay cheap: the ``rick`` CLI imports it on every
start, so nothing here pulls in pluggy, click, attrs or the plugins.
"""

__version__ = "0.1.0"
