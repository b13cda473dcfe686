"""What happened, derived from the store: net positions and P&L from fills.

Pure functions over model values (no I/O), used by ``rick positions`` and
``rick pnl``, plus the plain-text table those commands print.

Positions are kept by the average-cost method, per broker and instrument:

- a fill that adds to a position (or opens one) moves the average entry price
  to the quantity-weighted average of the position and the fill;
- a fill that reduces a position keeps the average and realizes
  ``closed quantity x (fill price - average)`` (reversed for a short);
- a fill larger than the position closes it and opens the rest the other way,
  at the fill price.

Realized P&L is in the instrument's quote currency, the part after ``_`` of a
pair (``EUR_USD`` -> ``USD``). Fills do not carry the currency of a single
listing (``AAPL``), so its quote currency is reported as ``""`` (unknown). Fees
are summed per fee currency and not deducted from realized P&L, as they may be
in another currency.

Arithmetic is exact: sums and products never round. Only an average can need a
division that does not terminate (3 units bought for 10 in total); it is then
rounded to 34 significant digits, and what a position realizes when it is closed
to flat is still exact, since the last reduction takes the whole remaining cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import TYPE_CHECKING

from attrs import field, frozen

from rick_core.model import Fill, Side

if TYPE_CHECKING:
    from rick_core.store import AccountSnapshot

__all__ = [
    "BrokerPnl",
    "NetPosition",
    "format_amounts",
    "format_money",
    "format_table",
    "format_time",
    "net_positions",
    "pnl_summary",
    "quote_currency_of",
]

_TRAPS = [InvalidOperation, DivisionByZero, Overflow]
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=_TRAPS)
"""Sums and products of finite Decimals never round in this context."""
_DIVIDE = Context(prec=34, rounding=ROUND_HALF_EVEN, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=_TRAPS)
"""Divisions that do not terminate round to 34 significant digits (IEEE decimal128)."""

_ZERO = Decimal(0)


def quote_currency_of(instrument: str) -> str:
    """The quote currency of a canonical symbol: ``"USD"`` for ``EUR_USD``, ``""`` for
    a single listing such as ``AAPL``, whose currency the symbol does not say."""
    return instrument.split("_", 1)[1] if "_" in instrument else ""


@frozen
class NetPosition:
    """One broker's net position in one instrument, derived from its fills.

    ``quantity`` is signed (positive long, negative short, zero flat) and
    ``average_price`` is None when flat. ``realized_pnl`` and ``volume`` (the sum
    of ``quantity x price`` of every fill) are in ``quote_currency``; ``fees`` maps
    each fee currency (``""`` if the venue did not say) to the sum of fees in it.
    """

    broker: str
    instrument: str
    quote_currency: str
    quantity: Decimal
    average_price: Decimal | None
    realized_pnl: Decimal
    fees: dict[str, Decimal] = field(hash=False)
    volume: Decimal
    fills: int
    last_fill_time: datetime

    @property
    def is_flat(self) -> bool:
        """True when nothing is held: the position is kept only for its P&L."""
        return self.quantity == 0


class _Book:
    """The running average-cost state of one (broker, instrument)."""

    __slots__ = ("cost", "fees", "fills", "last_time", "quantity", "realized", "volume")

    def __init__(self) -> None:
        self.quantity = _ZERO  # signed
        self.cost = _ZERO  # signed: quantity x average price
        self.realized = _ZERO
        self.volume = _ZERO
        self.fees: dict[str, Decimal] = {}
        self.fills = 0
        self.last_time = datetime.min.replace(tzinfo=UTC)

    def apply(self, fill: Fill) -> None:
        """Book one fill (in the exact context)."""
        price = fill.price
        delta = fill.quantity if fill.side is Side.BUY else -fill.quantity
        self.volume += fill.quantity * price
        self.fees[fill.fee_currency] = self.fees.get(fill.fee_currency, _ZERO) + fill.fee
        self.fills += 1
        self.last_time = max(self.last_time, fill.time)
        held = self.quantity
        if held == 0 or (held > 0) == (delta > 0):  # opening or adding
            self.quantity = held + delta
            self.cost += delta * price
            return
        closing = min(abs(delta), abs(held))
        if closing == abs(held):
            removed = self.cost  # the whole cost: closing to flat is exact
        else:
            removed = _DIVIDE.divide(self.cost * closing, abs(held))
        closed = closing if delta > 0 else -closing
        self.realized += -(closed * price) - removed
        self.quantity = held + closed
        self.cost -= removed
        rest = delta - closed
        if rest:  # the fill was bigger than the position: the rest opens the other way
            self.quantity = rest
            self.cost = rest * price

    def position(self, broker: str, instrument: str) -> NetPosition:
        average = None if self.quantity == 0 else _DIVIDE.divide(self.cost, self.quantity)
        return NetPosition(
            broker=broker,
            instrument=instrument,
            quote_currency=quote_currency_of(instrument),
            quantity=self.quantity,
            average_price=average,
            realized_pnl=self.realized,
            fees=dict(sorted(self.fees.items())),
            volume=self.volume,
            fills=self.fills,
            last_fill_time=self.last_time,
        )


def net_positions(fills: Iterable[Fill]) -> list[NetPosition]:
    """Net position of every (broker, instrument) with fills, sorted by both.

    Fills are booked in time order (fills at the same time in the order given).
    Flat positions are included, for their realized P&L; see
    :attr:`NetPosition.is_flat`.
    """
    books: dict[tuple[str, str], _Book] = {}
    with localcontext(_EXACT):
        for fill in sorted(fills, key=lambda f: f.time):
            key = (fill.broker, fill.instrument)
            book = books.get(key)
            if book is None:
                book = books[key] = _Book()
            book.apply(fill)
        return [book.position(*key) for key, book in sorted(books.items())]


@frozen
class BrokerPnl:
    """P&L of one broker: per instrument from fills, and its latest account snapshot.

    ``positions`` are the broker's :class:`NetPosition` values, flat ones
    included, sorted by instrument; ``account`` is None if no snapshot is stored.
    """

    broker: str
    positions: tuple[NetPosition, ...]
    account: AccountSnapshot | None

    @property
    def realized_pnl(self) -> dict[str, Decimal]:
        """Realized P&L summed per quote currency (``""``: unknown currency)."""
        return _sum_by_currency((p.quote_currency, p.realized_pnl) for p in self.positions)

    @property
    def fees(self) -> dict[str, Decimal]:
        """Fees summed per fee currency."""
        return _sum_by_currency(item for p in self.positions for item in p.fees.items())


def _sum_by_currency(items: Iterable[tuple[str, Decimal]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    with localcontext(_EXACT):
        for currency, amount in items:
            totals[currency] = totals.get(currency, _ZERO) + amount
    return dict(sorted(totals.items()))


def pnl_summary(fills: Iterable[Fill], accounts: Iterable[AccountSnapshot]) -> list[BrokerPnl]:
    """Per broker (sorted by name): P&L per instrument and the account snapshot.

    Every broker with fills or a snapshot is included.
    """
    by_broker: dict[str, list[NetPosition]] = {}
    for position in net_positions(fills):
        by_broker.setdefault(position.broker, []).append(position)
    snapshots = {snapshot.account.broker: snapshot for snapshot in accounts}
    return [
        BrokerPnl(
            broker=broker,
            positions=tuple(by_broker.get(broker, ())),
            account=snapshots.get(broker),
        )
        for broker in sorted(by_broker.keys() | snapshots.keys())
    ]


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows of text as left-aligned columns two spaces apart, headers first.

    Trailing spaces are stripped, so the last column is never padded.
    """
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def format_time(value: datetime) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` in UTC, for tables."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_money(amount: Decimal, currency: str) -> str:
    """``"8 USD"``; just ``"8"`` when the currency is unknown (``""``)."""
    return f"{amount} {currency}" if currency else str(amount)


def format_amounts(amounts: dict[str, Decimal]) -> str:
    """Amounts per currency as ``"0.04 USD, 0.001 BNB"``; ``"0"`` if there are none."""
    return ", ".join(format_money(a, c) for c, a in amounts.items()) or "0"
