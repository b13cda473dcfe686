"""Model construction on the hot path: validated Quote and Fill values per second,
against a plain ``__slots__`` class holding the same fields (no validation),
measured in the same run. The ratio is the price of validation at the edge."""

from __future__ import annotations

import timeit
from decimal import Decimal

from rick_core.model import Fill, Quote, utc_now


class PlainQuote:
    __slots__ = ("ask", "ask_size", "bid", "bid_size", "instrument", "source", "time")

    def __init__(self, instrument, bid, ask, time, source, bid_size=None, ask_size=None):  # type: ignore[no-untyped-def]
        self.instrument, self.bid, self.ask, self.time = instrument, bid, ask, time
        self.source, self.bid_size, self.ask_size = source, bid_size, ask_size


def rate(make: object, number: int) -> float:
    return number / min(timeit.repeat(make, number=number, repeat=5))  # type: ignore[arg-type]


def main() -> None:
    now, bid, ask, size = utc_now(), Decimal("1.0841"), Decimal("1.0843"), Decimal(1_000_000)
    n = 50_000
    fields = {
        "instrument": "EUR_USD",
        "bid": bid,
        "ask": ask,
        "time": now,
        "source": "paper",
        "bid_size": size,
        "ask_size": size,
    }
    quote = rate(lambda: Quote(**fields), n)
    plain = rate(lambda: PlainQuote(**fields), n)
    fill = rate(
        lambda: Fill(
            fill_id="f1",
            client_order_id="rk1",
            instrument="EUR_USD",
            side="buy",
            quantity=size,
            price=ask,
            time=now,
            broker="paper",
        ),
        n,
    )
    print("Model construction (best of 5 x 50,000)")
    print(
        f"  Quote        {quote:12,.0f}/s   {plain / quote:5.1f}x the cost of a plain slots class"
    )
    print(f"  plain class  {plain:12,.0f}/s")
    print(f"  Fill         {fill:12,.0f}/s")


if __name__ == "__main__":
    main()
