"""Mapping canonical instrument symbols (see :mod:`rick_core.model`) to a venue's
native spelling and back.

Every broker plugin exposes one :class:`SymbolMap` as ``Broker.symbols``. Most
venues differ from the canonical form only in the pair separator, which
:class:`SeparatorSymbolMap` covers (OANDA ``EUR_USD`` is canonical already,
Coinbase ``BTC-USD`` uses a hyphen); ``overrides`` handles the exceptions
(a venue that calls a currency by another code, or lists a ticker under
another name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from rick_core.model import ModelError, check_symbol

__all__ = ["SeparatorSymbolMap", "SymbolMap", "UnknownSymbolError"]


class UnknownSymbolError(ModelError):
    """A symbol has no mapping to or from the venue's form."""


@runtime_checkable
class SymbolMap(Protocol):
    """Two-way translation between canonical and venue-native symbols.

    ``from_venue(to_venue(s)) == s`` must hold for every symbol the venue lists.
    """

    def to_venue(self, symbol: str) -> str:
        """The venue's spelling of canonical ``symbol``."""
        ...

    def from_venue(self, native: str) -> str:
        """The canonical spelling of the venue's ``native`` symbol."""
        ...


class SeparatorSymbolMap:
    """Pairs joined by ``separator`` at the venue, listings spelled as they are.

    >>> m = SeparatorSymbolMap("-")
    >>> m.to_venue("BTC_USD"), m.from_venue("BTC-USD")
    ('BTC-USD', 'BTC_USD')
    """

    def __init__(self, separator: str, overrides: Mapping[str, str] | None = None) -> None:
        if not separator:
            raise ValueError("separator must not be empty")
        self.separator = separator
        self._to_venue = dict(overrides or {})
        self._from_venue = {native: canonical for canonical, native in self._to_venue.items()}
        if len(self._from_venue) != len(self._to_venue):
            raise ValueError("overrides map two canonical symbols to one venue symbol")
        for canonical in self._to_venue:
            check_symbol(canonical)

    def to_venue(self, symbol: str) -> str:
        check_symbol(symbol)
        if symbol in self._to_venue:
            return self._to_venue[symbol]
        return symbol.replace("_", self.separator)

    def from_venue(self, native: str) -> str:
        if native in self._from_venue:
            return self._from_venue[native]
        canonical = native.upper().replace(self.separator, "_")
        if canonical.count("_") > 1:
            raise UnknownSymbolError(f"venue symbol {native!r} has more than one separator")
        try:
            return check_symbol(canonical)
        except ModelError as exc:
            raise UnknownSymbolError(
                f"venue symbol {native!r} has no canonical form: {exc}"
            ) from None
