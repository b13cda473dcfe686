"""The paper broker's quote sources: the simulated market and the replay of recordings."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from rick_core.model import AssetClass, Instrument, ModelError, Quote
from rick_core.paper.market import (
    DEFAULT_UNIVERSE,
    InstrumentSpec,
    MarketExhausted,
    QuoteSource,
    ReplayError,
    ReplayMarket,
    SimulatedMarket,
)

START = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
SPECS = {spec.instrument.symbol: spec for spec in DEFAULT_UNIVERSE}
SECONDS_PER_YEAR = 365 * 24 * 3600


def market(*symbols: str, seed: int = 0, interval: float = 0.5) -> SimulatedMarket:
    specs = [SPECS[s] for s in symbols] if symbols else DEFAULT_UNIVERSE
    return SimulatedMarket(specs, seed=seed, interval=interval, start=START, source="paper")


def take(source: QuoteSource, n: int) -> list[Quote]:
    return [source.next_quote() for _ in range(n)]


def on_increment(value: Decimal, increment: Decimal) -> bool:
    return value % increment == 0 and value.as_tuple().exponent == increment.as_tuple().exponent


# ---------------------------------------------------------------------------
# the default universe


def test_the_default_universe_has_fx_crypto_and_equities_on_their_increments() -> None:
    by_class = {
        cls: sorted(s for s, spec in SPECS.items() if spec.instrument.asset_class is cls)
        for cls in (AssetClass.FX, AssetClass.CRYPTO, AssetClass.EQUITY)
    }
    assert by_class == {
        AssetClass.FX: sorted(
            ["EUR_USD", "GBP_USD", "USD_JPY", "EUR_JPY", "AUD_USD", "USD_CHF", "EUR_GBP"]
        ),
        AssetClass.CRYPTO: ["BTC_USD", "ETH_USD", "SOL_USD"],
        AssetClass.EQUITY: ["AAPL", "MSFT", "NVDA", "SPY"],
    }
    assert len(SPECS) == len(DEFAULT_UNIVERSE)  # no symbol twice
    for symbol, spec in SPECS.items():
        instrument = spec.instrument
        assert instrument.price_increment is not None
        assert instrument.size_increment is not None
        assert spec.spread >= instrument.price_increment, symbol
        assert spec.price > 100 * instrument.price_increment, symbol
        assert Decimal("0.01") < spec.volatility < 2, symbol
        if instrument.asset_class is AssetClass.FX:
            jpy = symbol.endswith("_JPY")
            assert instrument.price_increment == Decimal("0.001" if jpy else "0.00001")
            assert instrument.size_increment == 1
            assert 1_000_000 <= spec.size <= 5_000_000, symbol
            assert spec.spread < spec.price / 5000, symbol  # under 2 basis points
        elif instrument.asset_class is AssetClass.CRYPTO:
            assert instrument.price_increment == Decimal("0.01")
            assert instrument.size_increment < 1
            assert instrument.quote_currency == "USD"
            assert spec.size * spec.price < 1_000_000, symbol  # a few coins, not a fortune
        else:
            assert instrument.quote_currency == "USD"
            assert instrument.price_increment == Decimal("0.01")
            assert instrument.size_increment == 1
            assert 100 <= spec.size <= 1000, symbol
    # a USD account values GBP and JPY P&L through these
    assert {"GBP_USD", "USD_JPY"} <= SPECS.keys()
    assert SPECS["BTC_USD"].instrument.size_increment == Decimal("0.00000001")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"price": 1.1}, "got float 1.1; floats are refused"),
        ({"spread": "0"}, "spread must be greater than zero"),
        ({"size": "-1"}, "size must be greater than zero"),
        ({"volatility": "7"}, "give it as a fraction (0.07 for 7 %)"),
        ({"volatility": "-0.1"}, "volatility must not be negative"),
        (
            {"instrument": Instrument.pair("EUR_USD")},
            "EUR_USD: a simulated instrument needs price_increment and size_increment",
        ),
    ],
)
def test_a_bad_spec_fails_at_construction(overrides: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "instrument": SPECS["EUR_USD"].instrument,
        "price": "1.1",
        "spread": "0.0001",
        "volatility": "0.07",
        "size": 1_000_000,
    }
    with pytest.raises(ModelError) as info:
        InstrumentSpec(**{**values, **overrides})  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"specs": []}, ValueError, "at least one InstrumentSpec"),
        ({"specs": [SPECS["AAPL"], SPECS["AAPL"]]}, ValueError, "more than once: AAPL"),
        ({"interval": 0}, ValueError, "interval must be a positive number"),
        ({"interval": float("nan")}, ValueError, "interval must be a positive number"),
        ({"start": datetime(2027, 3, 1)}, ModelError, "naive datetime"),
        ({"source": ""}, ValueError, "source must be a non-empty string"),
        ({"seed": "1"}, TypeError, "seed must be an int"),
    ],
)
def test_a_bad_simulated_market_fails_at_construction(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    values: dict[str, object] = {"specs": DEFAULT_UNIVERSE, "start": START, "source": "paper"}
    with pytest.raises(error) as info:
        SimulatedMarket(**{**values, **kwargs})  # type: ignore[arg-type]
    assert message in str(info.value)


# ---------------------------------------------------------------------------
# the simulated market


def test_the_same_seed_gives_the_same_quotes_and_another_seed_others() -> None:
    first, again, other = market(seed=7), market(seed=7), market(seed=8)
    a, b, c = take(first, 3000), take(again, 3000), take(other, 3000)
    assert a == b
    assert [first.peek_time(), first.current("SPY")] == [again.peek_time(), again.current("SPY")]
    assert a != c
    assert [q.bid for q in a if q.instrument == "EUR_USD"] != [
        q.bid for q in c if q.instrument == "EUR_USD"
    ]


def test_an_instruments_path_does_not_depend_on_the_rest_of_the_universe() -> None:
    alone = take(market("BTC_USD", seed=3), 200)
    mixed = [q for q in take(market(seed=3), 200 * len(DEFAULT_UNIVERSE) * 2)]
    assert [q for q in mixed if q.instrument == "BTC_USD"][:200] == alone


def test_every_instrument_has_an_initial_quote_at_the_start() -> None:
    m = market()
    assert m.instruments.keys() == SPECS.keys()
    for symbol, spec in SPECS.items():
        q = m.current(symbol)
        assert q is not None
        assert q.time == START
        assert spec.instrument.price_increment is not None
        assert abs(q.mid - spec.price) <= spec.spread * 3 + spec.instrument.price_increment
    assert m.current("XAU_USD") is None
    assert m.peek_time() > 0


def test_quotes_come_in_time_order_about_every_interval() -> None:
    interval = 0.25
    m = market(seed=1, interval=interval)
    last: dict[str, datetime] = {s: START for s in SPECS}
    gaps: list[float] = []
    previous = (0.0, -1)
    order = list(SPECS)
    for _ in range(20_000):
        due = m.peek_time()
        q = m.next_quote()
        assert q.time == START + timedelta(seconds=due)
        assert q.time.tzinfo is UTC
        assert q.source == "paper"
        key = (due, order.index(q.instrument))
        assert key > previous  # time order; ties in the order of the specs
        previous = key
        gaps.append((q.time - last[q.instrument]).total_seconds())
        last[q.instrument] = q.time
        assert m.current(q.instrument) is q
    assert 0.5 * interval <= min(gaps) and max(gaps) <= 1.5 * interval
    assert math.isclose(sum(gaps) / len(gaps), interval, rel_tol=0.02)
    assert all(
        abs((t - START).total_seconds() - 20_000 / 14 * interval) < 30 for t in last.values()
    )


def test_quotes_are_valid_and_on_the_increments() -> None:
    m = market(seed=5)
    for q in itertools.chain((m.current(s) for s in SPECS), take(m, 30_000)):
        assert q is not None
        instrument = SPECS[q.instrument].instrument
        tick, lot = instrument.price_increment, instrument.size_increment
        assert tick is not None and lot is not None
        assert 0 < q.bid < q.ask
        assert q.spread >= tick
        assert on_increment(q.bid, tick) and on_increment(q.ask, tick)
        assert q.bid_size is not None and q.ask_size is not None
        for size in (q.bid_size, q.ask_size):
            assert size > 0 and size >= (instrument.min_size or 0)
            assert on_increment(size, lot)


def test_spreads_and_sizes_vary_around_the_spec() -> None:
    quotes = take(market("EUR_USD", seed=2), 20_000)
    spec = SPECS["EUR_USD"]
    spreads = [q.spread for q in quotes]
    sizes = [q.bid_size for q in quotes if q.bid_size is not None]
    assert len(set(spreads)) > 5 and len(set(sizes)) > 5
    assert abs(sum(spreads, Decimal(0)) / len(spreads) / spec.spread - 1) < Decimal("0.1")
    assert abs(sum(sizes, Decimal(0)) / len(sizes) / spec.size - 1) < Decimal("0.1")


def test_a_price_near_one_tick_never_quotes_zero() -> None:
    instrument = Instrument.pair("SHIB_USD", "crypto", price_increment="0.00001", size_increment=1)
    spec = InstrumentSpec(instrument, "0.00002", "0.00001", "4", 1000)
    m = SimulatedMarket([spec], seed=1, start=START, source="paper")
    for q in take(m, 5000):
        assert q.bid >= Decimal("0.00001") and q.ask > q.bid


def annualised_volatility(quotes: list[Quote], every: int) -> float:
    sampled = quotes[::every]
    returns = [math.log(b.mid / a.mid) for a, b in itertools.pairwise(sampled)]
    years = (sampled[-1].time - sampled[0].time).total_seconds() / SECONDS_PER_YEAR
    return math.sqrt(math.fsum(r * r for r in returns) / years)


@pytest.mark.parametrize("symbol", ["EUR_USD", "USD_JPY", "BTC_USD", "AAPL"])
def test_realised_volatility_matches_the_spec(symbol: str) -> None:
    """Sampled every 500 quotes (longer than a momentum regime) over 250,000 quotes.

    A fixed seed makes this deterministic; the tolerance is several standard errors
    wide (500 returns estimate a volatility to about 3 %, regimes add lumpiness).
    """
    quotes = take(market(symbol, seed=11), 250_000)
    realised = annualised_volatility(quotes, 500)
    assert realised == pytest.approx(float(SPECS[symbol].volatility), rel=0.2)


def test_momentum_regimes_make_longer_moves_bigger_than_a_random_walks() -> None:
    """A variance ratio above 1: 100-quote moves vary more than 100 one-quote moves."""
    quotes = take(market("BTC_USD", seed=4), 200_000)
    short = annualised_volatility(quotes, 1)
    long = annualised_volatility(quotes, 100)
    assert (long / short) ** 2 > 1.15


def test_the_simulated_market_is_a_quote_source() -> None:
    assert isinstance(market(), QuoteSource)


# ---------------------------------------------------------------------------
# replay

JSONL = """\
# recorded on a quiet morning
{"instrument": "EUR_USD", "bid": 1.16510, "ask": "1.16518", "time": "2026-11-24T12:00:00+01:00",\
 "bid_size": 1000000, "ask_size": "2500000.0", "source": "oanda"}

{"instrument": "BTC_USD", "bid": "105000.10", "ask": 105002.5, "time": "2026-11-24T11:00:00.250Z"}
{"instrument": "EUR_USD", "bid": 1.16512, "ask": 1.1652, "time": "2026-11-24T11:00:01.000+00:00"}
{"instrument": "AAPL", "bid": "240.01", "ask": "240.03", "time": "2026-11-24T06:00:03-05:00"}
"""

CSV = """\
time,instrument,bid,ask,bid_size,ask_size
# comment lines and blank lines are skipped

2026-11-24T12:00:00+01:00,EUR_USD,1.16510,1.16518,1000000,2500000.0
2026-11-24T11:00:00.250Z,BTC_USD,105000.10,105002.5,,
2026-11-24T11:00:01.000+00:00,EUR_USD,1.16512,1.1652,,
2026-11-24T06:00:03-05:00,AAPL,240.01,240.03,100,200
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def replay(path: Path, **kwargs: object) -> ReplayMarket:
    return ReplayMarket.from_file(path, start=START, source="replay", **kwargs)  # type: ignore[arg-type]


def drain(source: ReplayMarket) -> list[tuple[float, Quote]]:
    result = []
    while (due := source.peek_time()) is not None:
        result.append((due, source.next_quote()))
    return result


@pytest.mark.parametrize(
    ("name", "text"), [("q.jsonl", JSONL), ("q.ndjson", JSONL), ("Q.CSV", CSV)]
)
def test_a_recording_replays_exactly_and_re_timed(tmp_path: Path, name: str, text: str) -> None:
    m = replay(write(tmp_path, name, text))
    assert len(m) == 4
    played = drain(m)
    assert [due for due, _ in played] == [0.0, 0.25, 1.0, 3.0]
    assert [q.time for _, q in played] == [START + timedelta(seconds=s) for s in (0, 0.25, 1, 3)]
    assert {q.source for _, q in played} == {"replay"}
    first, btc, second, aapl = (q for _, q in played)
    # exactly as recorded: digits and exponents kept
    assert (str(first.bid), str(first.ask)) == ("1.16510", "1.16518")
    assert (str(first.bid_size), str(first.ask_size)) == ("1000000", "2500000.0")
    assert (str(btc.bid), str(btc.ask), btc.bid_size, btc.ask_size) == (
        "105000.10",
        "105002.5",
        None,
        None,
    )
    assert (str(second.bid), str(second.ask)) == ("1.16512", "1.1652")
    assert aapl.instrument == "AAPL"
    assert m.peek_time() is None
    with pytest.raises(MarketExhausted, match="loop=True"):
        m.next_quote()


def test_instruments_are_inferred_from_the_symbols(tmp_path: Path) -> None:
    m = replay(write(tmp_path, "q.jsonl", JSONL))
    assert list(m.instruments) == ["EUR_USD", "BTC_USD", "AAPL"]
    assert m.instruments["EUR_USD"] == Instrument.pair("EUR_USD", AssetClass.FX)
    assert m.instruments["BTC_USD"] == Instrument.pair("BTC_USD", AssetClass.CRYPTO)
    assert m.instruments["AAPL"] == Instrument(
        symbol="AAPL", asset_class=AssetClass.EQUITY, quote_currency="USD"
    )
    assert isinstance(m, QuoteSource)


def test_given_instruments_are_used(tmp_path: Path) -> None:
    given = {s: SPECS[s].instrument for s in ("EUR_USD", "BTC_USD", "AAPL", "GBP_USD")}
    m = replay(write(tmp_path, "q.jsonl", JSONL), instruments=given)
    assert dict(m.instruments) == {s: given[s] for s in ("EUR_USD", "BTC_USD", "AAPL")}


def test_current_is_the_first_recorded_quote_until_a_later_one_is_popped(tmp_path: Path) -> None:
    m = replay(write(tmp_path, "q.csv", CSV))
    eur, btc, aapl = (m.current(s) for s in ("EUR_USD", "BTC_USD", "AAPL"))
    assert eur is not None and btc is not None and aapl is not None
    assert (eur.bid, btc.bid, aapl.bid) == (
        Decimal("1.1651"),
        Decimal("105000.1"),
        Decimal("240.01"),
    )
    assert aapl.time == START + timedelta(seconds=3)
    assert m.current("GBP_USD") is None
    assert m.next_quote() == eur
    m.next_quote()
    second = m.next_quote()
    assert m.current("EUR_USD") is second and second.bid == Decimal("1.16512")


def test_a_looped_replay_runs_on_with_the_clock(tmp_path: Path) -> None:
    # offsets 0, 0.25, 1, 3: intervals 0.25, 0.75, 2, median (low) 0.75; a pass lasts 3.75 s
    m = replay(write(tmp_path, "q.jsonl", JSONL), loop=True)
    played = [(m.peek_time(), m.next_quote()) for _ in range(10)]
    assert [due for due, _ in played] == [0, 0.25, 1, 3, 3.75, 4, 4.75, 6.75, 7.5, 7.75]
    for due, q in played:
        assert due is not None and q.time == START + timedelta(seconds=due)
    assert [q.bid for _, q in played[4:8]] == [q.bid for _, q in played[:4]]
    assert m.peek_time() == 8.5


def test_a_loop_of_one_instant_advances_a_second_a_pass(tmp_path: Path) -> None:
    line = '{"instrument": "SPY", "bid": "640.00", "ask": "640.01", "time": "2026-11-24T15:00Z"}'
    m = replay(
        write(tmp_path, "q.jsonl", line + "\n" + line.replace("640.00", "640.01")), loop=True
    )
    assert [(m.peek_time(), m.next_quote().bid)[0] for _ in range(5)] == [0, 0, 1, 1, 2]


def test_quotes_in_memory_replay_too() -> None:
    recorded = [
        Quote("EUR_USD", "1.1", "1.2", START + timedelta(seconds=s), "rec") for s in (5, 6, 8)
    ]
    m = ReplayMarket(recorded, start=START - timedelta(days=1), source="replay")
    assert [q.time for _, q in drain(m)] == [
        START - timedelta(days=1) + timedelta(seconds=s) for s in (0, 1, 3)
    ]
    with pytest.raises(ReplayError, match=r"quote 1: time .* is before"):
        ReplayMarket(recorded[::-1], start=START, source="replay")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "q.jsonl",
            JSONL.replace('"bid": 1.16512, "ask": 1.1652', '"bid": 1.1653, "ask": 1.1652'),
            ":5: crossed quote: bid 1.1653 is above ask 1.1652",
        ),
        (
            "q.csv",
            CSV.replace("AAPL,240.01,240.03", "AAPL,240.04,240.03"),
            ":7: crossed quote: bid 240.04 is above ask 240.03",
        ),
        (
            "q.jsonl",
            JSONL.replace("2026-11-24T11:00:01.000+00:00", "2026-11-24T11:00:01"),
            ":5: time '2026-11-24T11:00:01' has no offset",
        ),
        (
            "q.csv",
            CSV.replace("2026-11-24T11:00:01.000+00:00", "2026-11-24T11:00:01"),
            ":6: time '2026-11-24T11:00:01' has no offset",
        ),
        (
            "q.jsonl",
            JSONL.replace("11:00:01.000+00:00", "11:00:00.000+00:00"),
            ":5: time 2026-11-24T11:00:00+00:00 is before the previous quote's "
            "2026-11-24T11:00:00.250000+00:00 (QFILE:4)",
        ),
        (
            "q.csv",
            CSV.replace("06:00:03-05:00", "05:00:03-05:00"),
            ":7: time 2026-11-24T10:00:03+00:00 is before the previous quote's",
        ),
        ("q.csv", CSV.replace("bid,ask,", "bid,"), ":1: missing column(s) ask in the header"),
        ("q.csv", CSV.replace(",BTC_USD,", ",BTC_USD,1,"), ":5: 7 fields where the header has 6"),
        ("q.csv", CSV.replace("bid_size", "bidsize"), ":1: unknown column(s) 'bidsize'"),
        ("q.jsonl", JSONL.replace('"ask": 105002.5, ', ""), ":4: missing key(s) ask"),
        ("q.jsonl", JSONL.replace('"bid_size"', '"bidsize"'), ":2: unknown key(s) bidsize"),
        ("q.jsonl", JSONL.replace('"ask": "240.03"', '"ask": "abc"'), ":6: ask 'abc' is not a"),
        ("q.jsonl", JSONL.replace('"ask": "240.03"', '"ask": NaN'), ":6: not valid JSON"),
        ("q.jsonl", JSONL.replace('"bid": "240.01"', '"bid": -1'), ":6: bid -1 must be greater"),
        ("q.jsonl", JSONL.replace("}\n\n", "\n\n"), ":2: not valid JSON"),
        ("q.jsonl", JSONL.replace('"AAPL"', '"aapl"'), ":6: 'aapl' is not a canonical"),
        ("q.csv", CSV.replace(",BTC_USD,", ",btc/usd,"), ":5: 'btc/usd' is not a canonical"),
        ("q.csv", CSV.replace(",BTC_USD,", ",btc/usd,"), "did you mean 'BTC_USD'?"),
        ("q.jsonl", "# nothing\n\n", ": no quotes to replay"),
        ("q.txt", JSONL, ": unknown replay file type '.txt': use .jsonl or .ndjson"),
    ],
)
def test_a_bad_recording_is_refused_naming_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ReplayError) as info:
        replay(path)
    assert str(info.value).startswith(str(path))
    assert message.replace("QFILE", str(path)) in str(info.value)


def test_a_symbol_missing_from_the_given_instruments_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "q.jsonl", JSONL)
    given = {s: SPECS[s].instrument for s in ("EUR_USD", "BTC_USD")}
    with pytest.raises(ReplayError) as info:
        replay(path, instruments=given)
    assert str(info.value) == (
        f"{path}:6: instrument AAPL is not among the instruments given (BTC_USD, EUR_USD); "
        "add it or leave instruments out to infer them"
    )


def test_prices_off_the_given_increments_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "q.csv", CSV.replace("1.16510,1.16518", "1.16510,1.165185"))
    given = {s: SPECS[s].instrument for s in ("EUR_USD", "BTC_USD", "AAPL")}
    with pytest.raises(ReplayError, match=r"q\.csv:4: ask 1\.165185 is not a multiple of EUR_USD"):
        replay(path, instruments=given)
    assert replay(path).current("EUR_USD") is not None  # without increments it replays
