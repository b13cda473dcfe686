from __future__ import annotations

import pytest

from rick_core.symbols import SeparatorSymbolMap, SymbolMap, UnknownSymbolError


@pytest.mark.parametrize(
    ("separator", "canonical", "native"),
    [
        ("_", "EUR_USD", "EUR_USD"),  # OANDA's spelling is the canonical one
        ("-", "BTC_USD", "BTC-USD"),  # Coinbase product ids
        ("-", "ETH_USDC", "ETH-USDC"),
        ("/", "EUR_USD", "EUR/USD"),
        ("-", "AAPL", "AAPL"),  # listings have no separator
    ],
)
def test_maps_both_ways(separator: str, canonical: str, native: str) -> None:
    symbols = SeparatorSymbolMap(separator)
    assert isinstance(symbols, SymbolMap)
    assert symbols.to_venue(canonical) == native
    assert symbols.from_venue(native) == canonical


def test_overrides_win_both_ways() -> None:
    symbols = SeparatorSymbolMap("-", overrides={"BTC_USD": "XBT-USD"})
    assert symbols.to_venue("BTC_USD") == "XBT-USD"
    assert symbols.from_venue("XBT-USD") == "BTC_USD"
    assert symbols.to_venue("ETH_USD") == "ETH-USD"


def test_unmappable_symbols_raise() -> None:
    symbols = SeparatorSymbolMap("-")
    with pytest.raises(UnknownSymbolError, match="more than one separator"):
        symbols.from_venue("BTC-USD-PERP")
    with pytest.raises(UnknownSymbolError, match="has no canonical form"):
        symbols.from_venue("BTC-usd$")
    with pytest.raises(ValueError, match="two canonical symbols to one venue symbol"):
        SeparatorSymbolMap("-", overrides={"BTC_USD": "X", "ETH_USD": "X"})
