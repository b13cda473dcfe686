"""Quote sources of the paper broker: a simulated market and a replay of recorded quotes.

Both implement :class:`QuoteSource`: a stream of :class:`~rick_core.model.Quote`
values in time order on a *virtual clock* that starts at 0 seconds. The paper
broker pops quotes as its clock advances; it never sleeps, so a simulated day
can run in seconds.

- :class:`SimulatedMarket` invents quotes for a universe of
  :class:`InstrumentSpec` (:data:`DEFAULT_UNIVERSE` unless told otherwise):
  deterministic for a seed, on the instruments' price and size increments.
- :class:`ReplayMarket` replays quotes recorded in a JSONL or CSV file, re-timed
  to start at a given time, optionally looping.

Every price and size leaving this module is a :class:`~decimal.Decimal` on the
instrument's increments; every time is timezone-aware UTC.
"""

from __future__ import annotations

import csv
import functools
import heapq
import itertools
import json
import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol, runtime_checkable

import attrs
from attrs import field, frozen

from rick_core.model import AssetClass, Instrument, ModelError, Quote, check_symbol, to_utc

__all__ = [
    "DEFAULT_UNIVERSE",
    "InstrumentSpec",
    "MarketExhausted",
    "QuoteSource",
    "ReplayError",
    "ReplayMarket",
    "SimulatedMarket",
    "infer_instrument",
]

_SECONDS_PER_YEAR: Final = 365 * 24 * 3600
_US_PER_YEAR: Final = _SECONDS_PER_YEAR * 1_000_000
_EXACT: Final = Context(prec=60)  # private context: results never depend on the caller's
_MICROSECOND: Final = timedelta(microseconds=1)


class MarketExhausted(IndexError):
    """:meth:`QuoteSource.next_quote` was called after the last quote."""


class ReplayError(ValueError):
    """A replay file (or quote list) is unusable. The message names file:line and the fix."""


# ---------------------------------------------------------------------------
# the protocol


@runtime_checkable
class QuoteSource(Protocol):
    """Quotes of a simulated market, in time order, on a virtual clock that starts at 0.

    A consumer loops ``while (t := source.peek_time()) is not None``, advances its
    clock to ``t`` seconds and calls :meth:`next_quote`.
    """

    @property
    def instruments(self) -> Mapping[str, Instrument]:
        """The instruments this source quotes, by canonical symbol."""
        ...

    def peek_time(self) -> float | None:
        """Virtual seconds since the start at which the next quote is due; None when exhausted."""
        ...

    def next_quote(self) -> Quote:
        """Pop the next quote; raises :class:`MarketExhausted` when there is none."""
        ...

    def current(self, instrument: str) -> Quote | None:
        """The latest quote of ``instrument`` (see each source for the quote before the first
        pop); None if this source does not quote it."""
        ...


# ---------------------------------------------------------------------------
# instrument specs and the default universe


def _decimal(value: Decimal | int | str) -> Decimal:
    """Exact Decimal; floats refused (they cannot hold prices exactly)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ModelError(
            f"expected a Decimal (or an int or a numeric string), got {type(value).__name__} "
            f"{value!r}; floats are refused because they cannot hold prices exactly: "
            f"use Decimal('{value}')"
        )
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ModelError(f"{value!r} is not a number") from None
    if not result.is_finite():
        raise ModelError(f"{value!r} is not a finite number")
    return result


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Decimal) -> None:
    if value <= 0:
        raise ModelError(f"{attribute.name} must be greater than zero, got {value}")


def _volatility(instance: object, attribute: attrs.Attribute[Any], value: Decimal) -> None:
    if value < 0:
        raise ModelError(f"volatility must not be negative, got {value}")
    if value > 5:
        raise ModelError(
            f"volatility {value} means {value * 100} % a year: give it as a fraction (0.07 for 7 %)"
        )


def _tradable(instance: object, attribute: attrs.Attribute[Any], value: Instrument) -> None:
    if not isinstance(value, Instrument):
        raise ModelError(f"instrument must be an Instrument, got {type(value).__name__}")
    if value.price_increment is None or value.size_increment is None:
        raise ModelError(
            f"instrument {value.symbol}: a simulated instrument needs price_increment and "
            "size_increment (quotes are quantized to them)"
        )


@frozen
class InstrumentSpec:
    """How :class:`SimulatedMarket` quotes one instrument.

    ``price`` is the starting mid, ``spread`` the typical spread in price units,
    ``volatility`` the annualised volatility as a fraction (0.07 is 7 % a year)
    and ``size`` the typical size quoted at the touch on each side. The
    instrument must have ``price_increment`` and ``size_increment`` set.
    """

    instrument: Instrument = field(validator=_tradable)
    price: Decimal = field(converter=_decimal, validator=_positive)
    spread: Decimal = field(converter=_decimal, validator=_positive)
    volatility: Decimal = field(converter=_decimal, validator=_volatility)
    size: Decimal = field(converter=_decimal, validator=_positive)


def _fx(symbol: str, price: str, spread: str, volatility: str, size: int) -> InstrumentSpec:
    increment = "0.001" if symbol.endswith("_JPY") else "0.00001"
    return InstrumentSpec(
        Instrument.pair(symbol, AssetClass.FX, price_increment=increment, size_increment=1),
        price,
        spread,
        volatility,
        size,
    )


def _crypto(
    symbol: str, price: str, spread: str, volatility: str, size: str, size_increment: str
) -> InstrumentSpec:
    return InstrumentSpec(
        Instrument.pair(
            symbol,
            AssetClass.CRYPTO,
            price_increment="0.01",
            size_increment=size_increment,
            min_size=size_increment,
        ),
        price,
        spread,
        volatility,
        size,
    )


def _equity(symbol: str, price: str, spread: str, volatility: str, size: int) -> InstrumentSpec:
    listing = Instrument(
        symbol=symbol,
        asset_class=AssetClass.EQUITY,
        quote_currency="USD",
        price_increment="0.01",
        size_increment=1,
        min_size=1,
    )
    return InstrumentSpec(listing, price, spread, volatility, size)


DEFAULT_UNIVERSE: Final[tuple[InstrumentSpec, ...]] = (
    # FX: mids, spreads and volatilities of a calm late-2020s market; touch sizes as on
    # an ECN's top of book. GBP_USD and USD_JPY let a USD account value GBP and JPY P&L.
    _fx("EUR_USD", "1.16500", "0.00006", "0.07", 3_000_000),
    _fx("GBP_USD", "1.34000", "0.00009", "0.08", 2_000_000),
    _fx("USD_JPY", "148.500", "0.008", "0.10", 3_000_000),
    _fx("EUR_JPY", "172.800", "0.015", "0.09", 1_000_000),
    _fx("AUD_USD", "0.66000", "0.00008", "0.10", 2_000_000),
    _fx("USD_CHF", "0.80000", "0.00010", "0.08", 1_000_000),
    _fx("EUR_GBP", "0.87000", "0.00010", "0.05", 1_000_000),
    # crypto: spot against USD; a few coins at the touch.
    _crypto("BTC_USD", "105000.00", "4.00", "0.55", "1.5", "0.00000001"),
    _crypto("ETH_USD", "3800.00", "0.30", "0.70", "20", "0.0001"),
    _crypto("SOL_USD", "190.00", "0.04", "0.90", "250", "0.001"),
    # US equities and the S&P 500 ETF: cent ticks, a few hundred shares at the touch.
    _equity("AAPL", "240.00", "0.02", "0.28", 300),
    _equity("MSFT", "480.00", "0.04", "0.25", 200),
    _equity("NVDA", "180.00", "0.02", "0.50", 500),
    _equity("SPY", "640.00", "0.01", "0.16", 800),
)
"""A universe of FX pairs, crypto pairs and US listings with plausible late-2020s
prices, spreads, volatilities and touch sizes."""


# ---------------------------------------------------------------------------
# the simulated market
#
# One quote costs one getrandbits() call whose 47 bits drive everything a tick
# needs, and table look-ups instead of per-tick float-to-Decimal conversion:
#
#   bits  0-15  standard normal draw (inverse CDF on a 65,536-point grid)
#   bits 16-23  spread level (256 lognormal quantiles, the top 2 three times wider)
#   bits 24-27  bid size level (16 levels, 0.25x to 1.75x the spec's size)
#   bits 28-31  ask size level
#   bits 32-37  step to the next quote (64 levels, 0.5x to 1.5x the interval)
#   bits 38-46  start of a momentum regime when all 9 are zero (p = 1/512)

_NORMAL_BITS: Final = 16
_SPREAD_LEVELS: Final = 256
_SIZE_LEVELS: Final = 16
_STEP_LEVELS: Final = 64
_REGIME_ODDS: Final = 512  # a regime starts with probability 1/512 on a tick outside one
_REGIME_TICKS: Final = (20, 80)  # a regime lasts this many ticks (uniform)
_REGIME_DRIFT: Final = (0.15, 0.35)  # its drift per tick, in standard deviations of the tick


def _regime_variance_share() -> float:
    """Extra long-run variance the momentum regimes add, as a share of the diffusion's.

    Regimes start at rate 1/(odds + E[L]) per tick and each adds an independent
    move of m * L standard deviations, so the long-run variance per tick grows by
    E[m^2] E[L^2] / (odds + E[L]). The diffusion is scaled down by that much, so
    that over horizons longer than a regime realised volatility matches the spec.
    """
    lo, hi = _REGIME_TICKS
    lengths = range(lo, hi + 1)
    mean_l = statistics.fmean(lengths)
    mean_l2 = statistics.fmean(n * n for n in lengths)
    a, b = _REGIME_DRIFT
    mean_m2 = (b**3 - a**3) / (3 * (b - a))
    return mean_m2 * mean_l2 / (_REGIME_ODDS + mean_l)


_DIFFUSION_SCALE: Final = 1 / math.sqrt(1 + _regime_variance_share())


@functools.cache
def _normal_table() -> tuple[float, ...]:
    """Standard normal quantiles on a 65,536-point grid, rescaled to unit variance."""
    n = 1 << _NORMAL_BITS
    inverse = statistics.NormalDist().inv_cdf
    table = [inverse((i + 0.5) / n) for i in range(n)]
    scale = 1 / math.sqrt(math.fsum(z * z for z in table) / n)
    return tuple(z * scale for z in table)


@functools.cache
def _spread_factors() -> tuple[float, ...]:
    """Multipliers of the typical spread: lognormal quantiles, mean 1, a few wide ones."""
    inverse = statistics.NormalDist().inv_cdf
    factors = [math.exp(0.3 * inverse((i + 0.5) / _SPREAD_LEVELS)) for i in range(_SPREAD_LEVELS)]
    factors[-2:] = [3.0, 3.0]  # news, thin liquidity: about one quote in 128
    mean = statistics.fmean(factors)
    return tuple(f / mean for f in factors)


class _Walker:
    """The state of one simulated instrument; ``tick`` makes its next quote."""

    __slots__ = (
        "bits",
        "cache",
        "drift",
        "exp",
        "half",
        "increment",
        "mid",
        "mu",
        "normal",
        "regime_left",
        "rng",
        "sigma",
        "sizes",
        "source",
        "step",
        "step_td",
        "step_us",
        "symbol",
        "time",
        "us",
    )

    def __init__(
        self,
        spec: InstrumentSpec,
        *,
        seed: int,
        interval_us: int,
        start: datetime,
        source: str,
    ) -> None:
        instrument = spec.instrument
        assert instrument.price_increment is not None  # checked by InstrumentSpec
        assert instrument.size_increment is not None
        self.symbol = instrument.symbol
        self.source = source
        # One generator per instrument, seeded from (seed, symbol): an instrument's path
        # does not change when others are added to or removed from the universe.
        self.rng = random.Random(f"rick.paper:{seed}:{instrument.symbol}")
        self.bits = self.rng.getrandbits
        self.normal = _normal_table()
        self.increment = instrument.price_increment
        self.cache: dict[int, Decimal] = {}
        # Price in float ticks; spread as a half-width in ticks. Rounding bid down and
        # ask up widens the quoted spread by one tick on average, so take it off here.
        price_increment = float(instrument.price_increment)
        self.mid = float(spec.price) / price_increment
        spread_ticks = float(spec.spread) / price_increment
        self.half = tuple(max(0.0, spread_ticks * f - 1.0) / 2 for f in _spread_factors())
        size_increment = instrument.size_increment
        smallest = max(instrument.min_size or size_increment, size_increment)
        sizes = []
        for level in range(_SIZE_LEVELS):
            factor = Decimal(25 + 10 * level).scaleb(-2, _EXACT)  # 0.25x to 1.75x, mean 1
            target = _EXACT.multiply(spec.size, factor)
            ticks = int(_EXACT.divide(target, size_increment).to_integral_value(ROUND_HALF_EVEN))
            size = _EXACT.multiply(Decimal(ticks), size_increment)
            sizes.append(_quantize_up(max(size, smallest), size_increment))
        self.sizes = tuple(sizes)
        # Steps: microseconds, timedeltas, and the walk's mean and deviation per step.
        sigma_per_us = float(spec.volatility) * _DIFFUSION_SCALE / math.sqrt(_US_PER_YEAR)
        self.step_us = tuple(
            max(1, round(interval_us * (0.5 + (k + 0.5) / _STEP_LEVELS)))
            for k in range(_STEP_LEVELS)
        )
        self.step_td = tuple(timedelta(microseconds=us) for us in self.step_us)
        self.sigma = tuple(sigma_per_us * math.sqrt(us) for us in self.step_us)
        self.mu = tuple(-0.5 * s * s for s in self.sigma)  # the walk's mean stays put
        self.exp = math.exp
        self.regime_left = 0
        self.drift = 0.0
        self.step = 0
        self.us = 0
        self.time = start

    def price(self, ticks: int) -> Decimal:
        cache = self.cache
        value = cache.get(ticks)
        if value is None:
            if len(cache) >= 65_536:
                cache.clear()
            value = cache[ticks] = _EXACT.multiply(Decimal(ticks), self.increment)
        return value

    def tick(self, move: bool) -> Quote:
        """Quote at ``self.time``, then schedule the next one. ``move``: walk first."""
        bits = self.bits(47)
        if move:
            drift = 0.0
            if self.regime_left:
                self.regime_left -= 1
                drift = self.drift
            elif not bits >> 38:
                self._start_regime()
            k = self.step
            self.mid *= self.exp(self.mu[k] + self.sigma[k] * (self.normal[bits & 0xFFFF] + drift))
        mid = self.mid
        half = self.half[(bits >> 16) & 0xFF]
        bid = math.floor(mid - half)
        ask = math.ceil(mid + half)
        if ask <= bid:
            ask = bid + 1
        if bid < 1:  # far below one tick: quote the smallest prices the venue allows
            bid, ask = 1, max(ask, 2)
        cache = self.cache
        bid_price = cache.get(bid) or self.price(bid)
        ask_price = cache.get(ask) or self.price(ask)
        sizes = self.sizes
        quote = Quote(
            self.symbol,
            bid_price,
            ask_price,
            self.time,
            self.source,
            sizes[(bits >> 24) & 0xF],
            sizes[(bits >> 28) & 0xF],
        )
        k = self.step = (bits >> 32) & 0x3F
        self.us += self.step_us[k]
        self.time += self.step_td[k]
        return quote

    def _start_regime(self) -> None:
        """A short trend: a drift of 0.15 to 0.35 deviations per tick for 20 to 80 ticks."""
        rng = self.rng
        self.regime_left = rng.randint(*_REGIME_TICKS)
        size = rng.uniform(*_REGIME_DRIFT)
        self.drift = size if rng.random() < 0.5 else -size


def _quantize_up(value: Decimal, increment: Decimal) -> Decimal:
    """``value`` rounded up to a multiple of ``increment``, with the increment's exponent."""
    ticks = int(_EXACT.divide(value, increment).to_integral_value(ROUND_CEILING))
    return _EXACT.multiply(Decimal(ticks), increment)


class SimulatedMarket:
    """Invented quotes for a universe of instruments: deterministic, endless, plausible.

    Each instrument quotes about every ``interval`` virtual seconds (each step is
    drawn uniformly between 0.5 and 1.5 intervals); the quotes of all instruments
    merge in time order, ties broken by the order of ``specs``. A quote at offset
    ``t`` seconds has ``time = start + t`` and ``source = source``.

    The mid follows a geometric random walk with the spec's annualised volatility,
    scaled to each step (``dt`` in years is ``step / (365 * 24 * 3600)``). About
    once every 560 ticks (some 5 minutes at the default interval) a *momentum
    regime* starts: for 20 to 80 ticks the walk drifts by 0.15 to 0.35 of a tick's
    standard deviation per tick, up or down, so a momentum strategy meets trends.
    The diffusion is scaled down to make room for these moves: over horizons
    longer than a regime (some minutes at the default interval) realised
    volatility matches the spec, over single ticks it is about 13 % lower. The
    normal draws come from a 65,536-point inverse-CDF grid (tails cut at 4.3
    deviations).

    The spread varies around the spec's spread (lognormal, about one quote in 128
    three times as wide), never below one price increment; bid is rounded down and
    ask up to the price increment. Sizes are 0.25x to 1.75x the spec's size on the
    size increment, at least ``min_size``.

    The same ``specs``, ``seed``, ``interval`` and ``start`` give exactly the same
    quotes. Each instrument draws from its own ``random.Random`` seeded from
    ``(seed, symbol)``, so its path does not depend on which other instruments are
    simulated.

    Every instrument has an initial quote at offset 0, available from
    :meth:`current` before anything is popped; the first quotes popped come after
    it. The market never runs out: :meth:`peek_time` is never None.
    """

    def __init__(
        self,
        specs: Iterable[InstrumentSpec] = DEFAULT_UNIVERSE,
        *,
        seed: int = 0,
        interval: float = 0.5,
        start: datetime,
        source: str,
    ) -> None:
        specs = tuple(specs)
        if not specs:
            raise ValueError("SimulatedMarket needs at least one InstrumentSpec")
        for spec in specs:
            if not isinstance(spec, InstrumentSpec):
                raise TypeError(f"specs must be InstrumentSpec values, got {type(spec).__name__}")
        symbols = [spec.instrument.symbol for spec in specs]
        duplicates = sorted({s for s in symbols if symbols.count(s) > 1})
        if duplicates:
            raise ValueError(f"instruments specified more than once: {', '.join(duplicates)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"source must be a non-empty string, got {source!r}")
        self._start = to_utc(start)
        self._source = source
        self._instruments = MappingProxyType(
            {spec.instrument.symbol: spec.instrument for spec in specs}
        )
        interval_us = max(1, round(interval * 1_000_000))
        self._walkers = [
            _Walker(spec, seed=seed, interval_us=interval_us, start=self._start, source=source)
            for spec in specs
        ]
        self._current = {w.symbol: w.tick(move=False) for w in self._walkers}
        self._heap = [(w.us, i) for i, w in enumerate(self._walkers)]
        heapq.heapify(self._heap)

    @property
    def instruments(self) -> Mapping[str, Instrument]:
        """The simulated instruments by symbol, in the order of the specs."""
        return self._instruments

    @property
    def start(self) -> datetime:
        """The time of offset 0 (UTC)."""
        return self._start

    @property
    def source(self) -> str:
        """The ``source`` of every quote."""
        return self._source

    def peek_time(self) -> float:
        """Virtual seconds since the start at which the next quote is due (never None)."""
        return self._heap[0][0] / 1_000_000

    def next_quote(self) -> Quote:
        """Pop the next quote (of whichever instrument is due first)."""
        heap = self._heap
        index = heap[0][1]
        walker = self._walkers[index]
        quote = walker.tick(True)
        heapq.heapreplace(heap, (walker.us, index))
        self._current[walker.symbol] = quote
        return quote

    def current(self, instrument: str) -> Quote | None:
        """The latest quote of ``instrument`` (its initial quote before any pop), or None
        if it is not simulated."""
        return self._current.get(instrument)


# ---------------------------------------------------------------------------
# the replay market

_CRYPTO_BASES: Final = frozenset(
    {
        "ADA", "ATOM", "AVAX", "BCH", "BNB", "BTC", "DAI", "DOGE", "DOT", "ETC", "ETH",
        "LINK", "LTC", "MATIC", "NEAR", "PEPE", "POL", "SHIB", "SOL", "TON", "TRX", "UNI",
        "USDC", "USDT", "XLM", "XMR", "XRP",
    }
)  # fmt: skip
_CRYPTO_QUOTES: Final = frozenset({"BTC", "DAI", "ETH", "USDC", "USDT"})

_REQUIRED: Final = ("time", "instrument", "bid", "ask")
_OPTIONAL: Final = ("bid_size", "ask_size", "source")
_FORMATS: Final = (
    "use .jsonl or .ndjson (one JSON object per line with instrument, bid, ask, time and "
    "optional bid_size, ask_size) or .csv (header time,instrument,bid,ask[,bid_size,ask_size])"
)
_NO_GAP_US: Final = 1_000_000  # loop gap when the recording has a single instant


def infer_instrument(symbol: str) -> Instrument:
    """The instrument a recorded canonical symbol most likely is, without increments.

    ``BASE_QUOTE`` is a crypto pair when the base (or the quote) is a well-known
    crypto asset (BTC, ETH, SOL, USDT...), else an FX pair; a ticker is a US equity.
    """
    check_symbol(symbol)
    if "_" in symbol:
        base, quote = symbol.split("_", 1)
        crypto = base in _CRYPTO_BASES or quote in _CRYPTO_QUOTES
        return Instrument.pair(symbol, AssetClass.CRYPTO if crypto else AssetClass.FX)
    return Instrument(symbol=symbol, asset_class=AssetClass.EQUITY, quote_currency="USD")


class ReplayMarket:
    """Recorded quotes replayed on the virtual clock.

    Quotes are re-timed: a quote recorded ``d`` after the first recorded quote is
    due at offset ``d`` and has ``time = start + d`` and ``source = source``.
    Prices and sizes are replayed exactly as recorded.

    With ``loop`` the recording plays again after its end, the clock running on:
    the next pass starts one median interval between recorded quotes after the
    last quote (one second if all quotes share one instant). Without it
    :meth:`peek_time` returns None after the last quote.

    :meth:`current` returns, for each recorded instrument, its *first recorded
    quote* until a later one is popped, so orders can be valued before the stream
    starts; popping that first quote returns it again.

    Build one from a file with :meth:`from_file`, or from quotes in memory, whose
    ``time`` is their recorded time, with the constructor. Everything is validated
    up front: a bad record raises :class:`ReplayError` and nothing is replayed.
    """

    def __init__(
        self,
        quotes: Iterable[Quote],
        *,
        start: datetime,
        source: str,
        instruments: Mapping[str, Instrument] | None = None,
        loop: bool = False,
    ) -> None:
        located = [(f"quote {i}", q) for i, q in enumerate(quotes)]
        for where, q in located:
            if not isinstance(q, Quote):
                raise ReplayError(f"{where}: expected a Quote, got {type(q).__name__}")
        self._setup(
            located, origin="quotes", start=start, source=source, instruments=instruments, loop=loop
        )

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        start: datetime,
        source: str,
        instruments: Mapping[str, Instrument] | None = None,
        loop: bool = False,
    ) -> ReplayMarket:
        """Load and validate a recording: JSONL (``.jsonl``, ``.ndjson``) or CSV (``.csv``).

        JSONL: one object a line with ``instrument``, ``bid``, ``ask``, ``time`` (ISO
        8601 with an offset) and optional ``bid_size``, ``ask_size``, ``source``
        (ignored: quotes carry ``source``); numbers may be JSON numbers or strings
        and are read exactly. CSV: a header row naming ``time``, ``instrument``,
        ``bid``, ``ask`` and optionally ``bid_size``, ``ask_size``, ``source``, in
        any order. Blank lines and lines starting with ``#`` are skipped.

        Times must be timezone-aware and non-decreasing; quotes must not be crossed
        (a locked quote, bid equal to ask, is accepted). If ``instruments`` is given
        every recorded symbol must be in it and prices and sizes must be on its
        increments; otherwise instruments are inferred (:func:`infer_instrument`).
        Raises :class:`ReplayError` naming ``file:line`` for the first bad record.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            parse = _parse_jsonl
        elif suffix == ".csv":
            parse = _parse_csv
        else:
            raise ReplayError(
                f"{path}: unknown replay file type {suffix or '(none)'!r}: {_FORMATS}"
            )
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM
        except UnicodeDecodeError as exc:
            raise ReplayError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        lines = [
            (number, line)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        located = parse(str(path), lines)
        market = cls.__new__(cls)
        market._setup(
            located,
            origin=str(path),
            start=start,
            source=source,
            instruments=instruments,
            loop=loop,
        )
        return market

    def _setup(
        self,
        located: list[tuple[str, Quote]],
        *,
        origin: str,
        start: datetime,
        source: str,
        instruments: Mapping[str, Instrument] | None,
        loop: bool,
    ) -> None:
        if not located:
            raise ReplayError(f"{origin}: no quotes to replay")
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"source must be a non-empty string, got {source!r}")
        self._start = to_utc(start)
        self._source = source
        self._loop = bool(loop)
        if instruments is not None:
            for key, instrument in instruments.items():
                if not isinstance(instrument, Instrument) or instrument.symbol != key:
                    raise ValueError(
                        f"instruments[{key!r}] must be the Instrument with symbol {key!r}, "
                        f"got {instrument!r}"
                    )
        known: dict[str, Instrument] = {}
        first = located[0][1].time
        previous = first
        previous_where = located[0][0]
        records: list[tuple[int, Quote]] = []
        for where, recorded in located:
            symbol = recorded.instrument
            if symbol not in known:
                if instruments is None:
                    known[symbol] = infer_instrument(symbol)
                elif symbol in instruments:
                    known[symbol] = instruments[symbol]
                else:
                    listed = ", ".join(sorted(instruments)) or "(none)"
                    raise ReplayError(
                        f"{where}: instrument {symbol} is not among the instruments given "
                        f"({listed}); add it or leave instruments out to infer them"
                    )
            _check_increments(where, recorded, known[symbol])
            if recorded.time < previous:
                raise ReplayError(
                    f"{where}: time {recorded.time.isoformat()} is before the previous "
                    f"quote's {previous.isoformat()} ({previous_where}); quotes must be in "
                    "time order (sort the file by time)"
                )
            previous, previous_where = recorded.time, where
            offset = (recorded.time - first) // _MICROSECOND
            records.append((offset, self._retime(recorded, offset)))
        self._instruments = MappingProxyType(known)
        self._records = records
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(records) if b[0] > a[0]]
        gap = statistics.median_low(gaps) if gaps else _NO_GAP_US
        self._period_us = records[-1][0] + gap
        self._position = 0
        self._pass = 0
        self._current: dict[str, Quote] = {}
        for _, q in records:
            self._current.setdefault(q.instrument, q)

    def _retime(self, recorded: Quote, offset_us: int) -> Quote:
        return Quote(
            recorded.instrument,
            recorded.bid,
            recorded.ask,
            self._start + timedelta(microseconds=offset_us),
            self._source,
            recorded.bid_size,
            recorded.ask_size,
        )

    @property
    def instruments(self) -> Mapping[str, Instrument]:
        """The recorded instruments by symbol, in order of first appearance."""
        return self._instruments

    @property
    def start(self) -> datetime:
        """The time of offset 0 (UTC)."""
        return self._start

    @property
    def source(self) -> str:
        """The ``source`` of every quote."""
        return self._source

    def __len__(self) -> int:
        """The number of recorded quotes (one pass)."""
        return len(self._records)

    def peek_time(self) -> float | None:
        """Virtual seconds since the start at which the next quote is due; None at the end
        (never with ``loop``)."""
        if self._position >= len(self._records):
            return None
        offset = self._pass * self._period_us + self._records[self._position][0]
        return offset / 1_000_000

    def next_quote(self) -> Quote:
        """Pop the next recorded quote, re-timed; :class:`MarketExhausted` after the last."""
        records = self._records
        if self._position >= len(records):
            raise MarketExhausted(
                f"the replay ended after {len(records)} quotes: check peek_time() is not None "
                "before next_quote(), or replay with loop=True"
            )
        offset, quote = records[self._position]
        if self._pass:
            quote = self._retime(quote, self._pass * self._period_us + offset)
        self._position += 1
        if self._loop and self._position == len(records):
            self._position = 0
            self._pass += 1
        self._current[quote.instrument] = quote
        return quote

    def current(self, instrument: str) -> Quote | None:
        """The latest popped quote of ``instrument``; before its first pop, its first recorded
        quote. None if the recording has no quote of it."""
        return self._current.get(instrument)


def _check_increments(where: str, quote: Quote, instrument: Instrument) -> None:
    for name, increment in (
        ("bid", instrument.price_increment),
        ("ask", instrument.price_increment),
        ("bid_size", instrument.size_increment),
        ("ask_size", instrument.size_increment),
    ):
        value = getattr(quote, name)
        if increment is None or value is None:
            continue
        if _EXACT.remainder(value, increment) != 0:
            raise ReplayError(
                f"{where}: {name} {value} is not a multiple of {instrument.symbol}'s "
                f"{'price' if name in ('bid', 'ask') else 'size'} increment {increment}; "
                "pass instruments without increments to replay it as recorded"
            )


# ---------------------------------------------------------------------------
# record parsing


def _number(where: str, name: str, value: object, *, optional: bool = False) -> Decimal | None:
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ReplayError(f"{where}: {name} is missing")
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ReplayError(f"{where}: {name} must be a number, got {value!r}")
    try:
        result = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ReplayError(f"{where}: {name} {value!r} is not a number") from None
    if not result.is_finite():
        raise ReplayError(f"{where}: {name} {value!r} is not a finite number")
    if optional and result < 0:
        raise ReplayError(f"{where}: {name} {result} is negative")
    if not optional and result <= 0:
        raise ReplayError(f"{where}: {name} {result} must be greater than zero")
    return result


def _record(where: str, fields: Mapping[str, object]) -> tuple[str, Quote]:
    """One validated quote from a record's fields (all present, as parsed)."""
    symbol = fields.get("instrument")
    if not isinstance(symbol, str) or not symbol.strip():
        raise ReplayError(f"{where}: instrument must be a symbol such as EUR_USD, got {symbol!r}")
    try:
        check_symbol(symbol.strip())
    except ModelError as exc:
        raise ReplayError(f"{where}: {exc}") from None
    text = fields.get("time")
    if not isinstance(text, str):
        raise ReplayError(f"{where}: time must be ISO 8601 text with an offset, got {text!r}")
    try:
        recorded = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReplayError(
            f"{where}: time {text!r} is not ISO 8601 (e.g. 2026-11-24T12:00:00.250+00:00)"
        ) from None
    if recorded.utcoffset() is None:
        raise ReplayError(
            f"{where}: time {text!r} has no offset: recorded times must say their zone "
            "(append Z or +00:00 for UTC)"
        )
    bid = _number(where, "bid", fields.get("bid"))
    ask = _number(where, "ask", fields.get("ask"))
    assert bid is not None and ask is not None
    if bid > ask:
        raise ReplayError(
            f"{where}: crossed quote: bid {bid} is above ask {ask}; check the columns are not "
            "swapped"
        )
    bid_size = _number(where, "bid_size", fields.get("bid_size"), optional=True)
    ask_size = _number(where, "ask_size", fields.get("ask_size"), optional=True)
    try:
        quote = Quote(symbol.strip(), bid, ask, recorded, "replay", bid_size, ask_size)
    except ModelError as exc:  # pragma: no cover - everything Quote checks is checked above
        raise ReplayError(f"{where}: {exc}") from None
    return where, quote


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def _parse_jsonl(origin: str, lines: Sequence[tuple[int, str]]) -> list[tuple[str, Quote]]:
    accepted = (*_REQUIRED, *_OPTIONAL)
    located = []
    for number, line in lines:
        where = f"{origin}:{number}"
        try:
            data = json.loads(line, parse_float=Decimal, parse_constant=_reject_constant)
        except ValueError as exc:
            raise ReplayError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ReplayError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ReplayError(
                f"{where}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
            )
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ReplayError(f"{where}: missing key(s) {', '.join(missing)}")
        located.append(_record(where, data))
    return located


def _parse_csv(origin: str, lines: Sequence[tuple[int, str]]) -> list[tuple[str, Quote]]:
    if not lines:
        return []
    header_line, header_text = lines[0]
    header = [name.strip().lower() for name in next(csv.reader([header_text]))]
    where = f"{origin}:{header_line}"
    accepted = (*_REQUIRED, *_OPTIONAL)
    unknown = [name for name in header if name not in accepted]
    if unknown:
        raise ReplayError(
            f"{where}: unknown column(s) {', '.join(map(repr, unknown))} in the header; "
            f"accepted: {', '.join(accepted)}"
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ReplayError(f"{where}: column(s) {', '.join(duplicated)} appear more than once")
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise ReplayError(
            f"{where}: missing column(s) {', '.join(missing)} in the header "
            f"({', '.join(header)}); required: {', '.join(_REQUIRED)}"
        )
    located = []
    for number, line in lines[1:]:
        where = f"{origin}:{number}"
        row = next(csv.reader([line]))
        if len(row) != len(header):
            raise ReplayError(
                f"{where}: {len(row)} fields where the header has {len(header)} "
                f"({', '.join(header)})"
            )
        located.append(_record(where, dict(zip(header, row, strict=True))))
    return located
