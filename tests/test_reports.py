"""Tests of rick_core.reports (positions and P&L from fills) and of the read commands
``rick orders``, ``rick fills``, ``rick positions`` and ``rick pnl``."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from rick_core.cli import _build_cli
from rick_core.model import Account, Fill, Order, OrderRequest, OrderStatus, to_jsonable
from rick_core.reports import (
    BrokerPnl,
    NetPosition,
    format_amounts,
    format_table,
    net_positions,
    pnl_summary,
)
from rick_core.store import AccountSnapshot, Store

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
D = Decimal


def fill(
    side: str,
    quantity: str,
    price: str,
    seconds: int = 0,
    *,
    instrument: str = "EUR_USD",
    broker: str = "paper",
    fee: str = "0",
    fee_currency: str = "USD",
    client_order_id: str = "rk-1",
    fill_id: str | None = None,
) -> Fill:
    return Fill(
        fill_id=fill_id or f"f-{broker}-{instrument}-{seconds}",
        client_order_id=client_order_id,
        instrument=instrument,
        side=side,
        quantity=D(quantity),
        price=D(price),
        time=T0 + timedelta(seconds=seconds),
        broker=broker,
        fee=D(fee),
        fee_currency=fee_currency,
    )


def position_after(*fills: Fill) -> NetPosition:
    [position] = net_positions(fills)
    return position


# ---------------------------------------------------------------------------
# net positions: the average-cost method, by hand


def test_average_cost_adding_reducing_flipping_and_closing() -> None:
    fills = [
        fill("buy", "3", "10", 0),
        fill("buy", "1", "14", 1),
        fill("sell", "2", "15", 2),
        fill("sell", "4", "9", 3),
        fill("buy", "2", "8", 4),
    ]
    # buy 3 @ 10, buy 1 @ 14: average (30 + 14) / 4 = 11
    p = position_after(*fills[:2])
    assert (p.quantity, p.average_price, p.realized_pnl) == (D(4), D(11), D(0))
    # sell 2 @ 15: the average stays 11, realized 2 x (15 - 11) = 8
    p = position_after(*fills[:3])
    assert (p.quantity, p.average_price, p.realized_pnl) == (D(2), D(11), D(8))
    # sell 4 @ 9: closes 2 at 9 (2 x (9 - 11) = -4, realized 4), opens short 2 @ 9
    p = position_after(*fills[:4])
    assert (p.quantity, p.average_price, p.realized_pnl) == (D(-2), D(9), D(4))
    assert not p.is_flat
    # buy 2 @ 8 covers the short: 2 x (9 - 8) = 2 more, realized 6, flat
    p = position_after(*fills)
    assert (p.quantity, p.average_price, p.realized_pnl) == (D(0), None, D(6))
    assert p.is_flat
    assert p.volume == D(30 + 14 + 30 + 36 + 16)
    assert p.fills == 5
    assert p.last_fill_time == T0 + timedelta(seconds=4)
    assert p.quote_currency == "USD"


def test_a_short_first_then_adding_to_it() -> None:
    p = position_after(fill("sell", "1", "1.2000", 0), fill("sell", "3", "1.1000", 1))
    # average (1.2000 + 3.3000) / 4 = 1.1250, to the places of the prices
    assert (p.quantity, str(p.average_price)) == (D(-4), "1.1250")
    p = position_after(
        fill("sell", "1", "1.2000", 0), fill("sell", "3", "1.1000", 1), fill("buy", "1", "1.0", 2)
    )
    assert (p.quantity, p.average_price, p.realized_pnl) == (D(-3), D("1.125"), D("0.125"))


def test_decimals_keep_their_exponent_and_are_exact() -> None:
    p = position_after(fill("buy", "1000.10", "1.08500", 0), fill("sell", "500.05", "1.09000", 1))
    assert str(p.average_price) == "1.08500"
    assert str(p.realized_pnl) == "2.5002500"  # 500.05 x 0.005, no float anywhere
    assert str(p.quantity) == "500.05"


def test_a_non_terminating_average_still_closes_exactly() -> None:
    # buy 1 @ 10, buy 2 @ 11: average 32 / 3, which no Decimal holds exactly
    opened = [fill("buy", "1", "10", 0), fill("buy", "2", "11", 1)]
    p = position_after(*opened)
    assert str(p.average_price) == "10.66666666666666666666666666666667"  # 34 digits
    # closed in two steps, the total realized is exactly 3 x 12 - 32 = 4
    p = position_after(*opened, fill("sell", "1", "12", 2), fill("sell", "2", "12", 3))
    assert (p.quantity, p.realized_pnl) == (D(0), D(4))


def test_positions_per_broker_and_instrument_with_fees_and_unknown_quote() -> None:
    fills = [
        fill("buy", "2", "150.25", 5, instrument="AAPL", broker="alpaca", fee="1", fee_currency=""),
        fill("buy", "1", "100", 1, fee="0.10"),
        fill("sell", "1", "110", 2, fee="0.0005", fee_currency="BNB"),
        fill("buy", "1", "120", 0, instrument="USD_JPY", fee="0.1", fee_currency="JPY"),
        fill("sell", "1", "130", 3, instrument="USD_JPY", fee="-0.05", fee_currency="JPY"),
    ]
    aapl, eur_usd, usd_jpy = net_positions(reversed(fills))  # any order in, time order used
    assert (aapl.broker, aapl.instrument, aapl.quote_currency) == ("alpaca", "AAPL", "")
    assert (aapl.quantity, str(aapl.average_price), aapl.fees) == (D(2), "150.25", {"": D(1)})
    assert (eur_usd.realized_pnl, eur_usd.fees) == (D(10), {"BNB": D("0.0005"), "USD": D("0.10")})
    assert (usd_jpy.quote_currency, usd_jpy.realized_pnl, usd_jpy.fees) == (
        "JPY",
        D(10),
        {"JPY": D("0.05")},
    )
    assert eur_usd.volume == D(210)
    assert to_jsonable(eur_usd)["fees"] == {"BNB": "0.0005", "USD": "0.10"}


def test_fills_at_the_same_time_are_booked_in_the_order_given() -> None:
    p = position_after(
        fill("buy", "1", "10", 0, fill_id="a"), fill("sell", "1", "12", 0, fill_id="b")
    )
    assert (p.quantity, p.realized_pnl) == (D(0), D(2))


def test_no_fills_no_positions() -> None:
    assert net_positions([]) == []
    assert pnl_summary([], []) == []


def test_pnl_summary_per_broker_with_accounts() -> None:
    snapshot = AccountSnapshot(
        account=Account(broker="oanda", currency="EUR", balance="100", equity="95.50", time=T0),
        first_equity=D("100.00"),
        first_time=T0,
    )
    fills = [
        fill("buy", "1", "10", 0, fee="0.1"),
        fill("sell", "1", "12", 1, fee="0.1"),
        fill("buy", "1", "100", 2, instrument="GBP_USD", fee="0.2"),
        fill("sell", "1", "99", 3, instrument="GBP_USD", fee="0.2"),
        fill("buy", "1", "150", 4, instrument="USD_JPY", fee="5", fee_currency="JPY"),
        fill("sell", "1", "151", 5, instrument="USD_JPY"),
    ]
    oanda, paper = pnl_summary(fills, [snapshot])
    assert oanda == BrokerPnl(broker="oanda", positions=(), account=snapshot)
    assert snapshot.equity_change == D("-4.50")
    assert paper.account is None
    assert [p.instrument for p in paper.positions] == ["EUR_USD", "GBP_USD", "USD_JPY"]
    assert paper.realized_pnl == {"JPY": D(1), "USD": D(1)}
    assert paper.fees == {"JPY": D(5), "USD": D("0.6")}
    assert format_amounts(paper.fees) == "5 JPY, 0.6 USD"
    assert format_amounts({}) == "0"


def test_format_table_aligns_columns() -> None:
    assert format_table(["a", "long header", "c"], [["xyz", "1", ""], ["", "22", "3"]]) == [
        "a    long header  c",
        "xyz  1",
        "     22           3",
    ]


# ---------------------------------------------------------------------------
# the commands


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner whose rick sees only the built-in plugins, whatever is installed."""
    from rick_core import plugins

    real = plugins.load_plugins
    monkeypatch.setattr(
        plugins, "load_plugins", lambda *a, **kw: real(*a, **{"entry_points": (), **kw})
    )
    return CliRunner()


def order(
    client_order_id: str,
    seconds: int,
    side: str,
    quantity: str,
    *,
    instrument: str = "EUR_USD",
    broker: str = "paper",
    status: OrderStatus = OrderStatus.FILLED,
    filled: str | None = None,
    average: str | None = None,
    limit: str | None = None,
    reason: str | None = None,
) -> Order:
    request = OrderRequest(
        instrument=instrument,
        side=side,
        quantity=D(quantity),
        type="limit" if limit else "market",
        limit_price=limit,
        client_order_id=client_order_id,
    )
    when = T0 + timedelta(seconds=seconds)
    return Order(
        request=request,
        broker=broker,
        status=status,
        filled_quantity=D(filled if filled is not None else quantity),
        average_fill_price=average,
        created_at=when,
        updated_at=when,
        reject_reason=reason,
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A rick home whose store (rick.db, the default) holds two brokers' orders and fills."""
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    with Store.open(tmp_path / "rick.db") as store:
        store.insert_order(order("rk-1", 0, "buy", "3", average="10"), strategy="ma")
        store.insert_order(order("rk-2", 1, "buy", "1", average="14", limit="14"), strategy="ma")
        store.insert_order(order("rk-3", 2, "sell", "2", average="15"), strategy="revert")
        store.insert_order(
            order(
                "rk-5",
                4,
                "buy",
                "10",
                instrument="AAPL",
                broker="alpaca",
                status=OrderStatus.PARTIALLY_FILLED,
                filled="4",
                average="150.20",
                limit="150.25",
            ),
            strategy="ma",
        )
        store.insert_order(
            order(
                "rk-6",
                5,
                "buy",
                "5",
                instrument="AAPL",
                broker="alpaca",
                status=OrderStatus.REJECTED,
                filled="0",
                limit="149",
                reason="insufficient buying power",
            ),
            strategy="ma",
        )
        # a venue's stop-loss close: reported by the venue, placed by no strategy
        store.record(
            orders=[order("venue-1", 3, "sell", "4", average="9")],
            fills=[
                fill("buy", "3", "10", 0, client_order_id="rk-1", fee="0.01"),
                fill("buy", "1", "14", 1, client_order_id="rk-2", fee="0.01"),
                fill("sell", "2", "15", 2, client_order_id="rk-3", fee="0.02"),
                fill("sell", "4", "9", 3, client_order_id="venue-1", fee="0.04"),
                fill(
                    "buy",
                    "4",
                    "150.20",
                    4,
                    instrument="AAPL",
                    broker="alpaca",
                    client_order_id="rk-5",
                    fee_currency="",
                ),
            ],
        )
        store.save_account(
            Account(broker="paper", currency="USD", balance="1000.00", equity="1000.00", time=T0)
        )
        store.save_account(
            Account(
                broker="paper",
                currency="USD",
                balance="1004.00",
                equity="1003.50",
                time=T0 + timedelta(seconds=10),
            )
        )
    return tmp_path


def rick(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(_build_cli(), list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_orders_table(runner: CliRunner, home: Path) -> None:
    lines = rick(runner, "orders").splitlines()
    assert lines[0].split() == [
        "time",
        "(UTC)",
        "order",
        "strategy",
        "broker",
        "instrument",
        "side",
        "qty",
        "type",
        "price",
        "status",
        "filled",
        "reason",
    ]
    assert [line.split()[2] for line in lines[1:]] == [
        "rk-1",
        "rk-2",
        "rk-3",
        "venue-1",
        "rk-5",
        "rk-6",
    ]
    assert lines[1].split() == [
        "2024-03-01", "12:00:00", "rk-1", "ma", "paper", "EUR_USD", "buy", "3", "market", "-",
        "filled", "3", "@", "10",
    ]  # fmt: skip
    assert lines[4].split()[3] == "-"  # no strategy
    assert lines[5].split()[3:] == [
        "ma", "alpaca", "AAPL", "buy", "10", "limit", "150.25", "partially_filled", "4", "@",
        "150.20",
    ]  # fmt: skip
    assert lines[6] == (
        "2024-03-01 12:00:05  rk-6     ma        alpaca  AAPL        buy   5    limit   149     "
        "rejected          0           insufficient buying power"
    )
    # columns line up: every row's order id starts where the header's does
    start = lines[0].index("order")
    assert all(line[start:].startswith(("rk-", "venue-")) for line in lines[1:])


def test_orders_filters_and_limit(runner: CliRunner, home: Path) -> None:
    def ids(*args: str) -> list[str]:
        return [
            o["request"]["client_order_id"]
            for o in json.loads(rick(runner, "orders", "--json", *args))
        ]

    assert ids("--broker", "alpaca") == ["rk-5", "rk-6"]
    assert ids("--strategy", "ma") == ["rk-1", "rk-2", "rk-5", "rk-6"]
    assert ids("--instrument", "eur_usd") == ["rk-1", "rk-2", "rk-3", "venue-1"]
    assert ids("--open") == ["rk-5"]
    assert ids("--limit", "2") == ["rk-5", "rk-6"]
    assert ids("--limit", "0") == ids()
    assert ids("--strategy", "ma", "--broker", "paper", "--instrument", "EUR_USD") == [
        "rk-1",
        "rk-2",
    ]
    assert ids("--broker", "nobody") == []
    assert rick(runner, "orders", "--broker", "nobody") == "no orders match\n"
    out = rick(runner, "orders", "--limit", "2")
    assert out.endswith("(the last 2; --limit 0 shows all)\n")
    assert len(out.splitlines()) == 4


def test_orders_json_is_the_model_plus_strategy(runner: CliRunner, home: Path) -> None:
    listed = json.loads(rick(runner, "orders", "--json"))
    with Store.open(home / "rick.db") as store:
        expected = [{**to_jsonable(o), "strategy": s} for o, s in store.orders_with_strategy()]
    assert listed == expected
    rk5 = listed[4]
    assert rk5["strategy"] == "ma"
    assert rk5["filled_quantity"] == "4" and rk5["average_fill_price"] == "150.20"
    assert rk5["request"]["limit_price"] == "150.25"
    assert listed[3]["strategy"] is None
    assert listed[5]["reject_reason"] == "insufficient buying power"


def test_fills(runner: CliRunner, home: Path) -> None:
    lines = rick(runner, "fills").splitlines()
    assert lines[0].split() == [
        "time", "(UTC)", "fill", "order", "strategy", "broker", "instrument", "side", "qty",
        "price", "fee",
    ]  # fmt: skip
    assert len(lines) == 6
    assert lines[3].split()[2:] == [
        "f-paper-EUR_USD-2", "rk-3", "revert", "paper", "EUR_USD", "sell", "2", "15", "0.02",
        "USD",
    ]  # fmt: skip
    assert lines[4].split()[4] == "-"
    assert lines[5].split()[-2:] == ["150.20", "0"]  # fee currency unknown: no currency shown

    listed = json.loads(rick(runner, "fills", "--json"))
    assert listed[0] == {
        "fill_id": "f-paper-EUR_USD-0",
        "client_order_id": "rk-1",
        "instrument": "EUR_USD",
        "side": "buy",
        "quantity": "3",
        "price": "10",
        "time": "2024-03-01T12:00:00+00:00",
        "broker": "paper",
        "fee": "0.01",
        "fee_currency": "USD",
        "venue_order_id": None,
        "strategy": "ma",
    }

    def ids(*args: str) -> list[str]:
        return [f["client_order_id"] for f in json.loads(rick(runner, "fills", "--json", *args))]

    assert ids("--strategy", "ma") == ["rk-1", "rk-2", "rk-5"]
    assert ids("--broker", "paper", "--limit", "1") == ["venue-1"]
    assert ids("--instrument", "AAPL") == ["rk-5"]
    assert rick(runner, "fills", "--strategy", "nobody") == "no fills match\n"


def test_positions(runner: CliRunner, home: Path) -> None:
    lines = rick(runner, "positions").splitlines()
    assert [line.split() for line in lines] == [
        ["broker", "instrument", "side", "quantity", "avg", "price", "realized", "fees", "fills",
         "last", "fill", "(UTC)"],
        ["alpaca", "AAPL", "long", "4", "150.20", "0", "0", "1", "2024-03-01", "12:00:04"],
        ["paper", "EUR_USD", "short", "-2", "9", "4", "USD", "0.08", "USD", "4", "2024-03-01",
         "12:00:03"],
    ]  # fmt: skip
    listed = json.loads(rick(runner, "positions", "--json", "--broker", "paper"))
    assert listed == [
        {
            "broker": "paper",
            "instrument": "EUR_USD",
            "quote_currency": "USD",
            "quantity": "-2",
            "average_price": "9",
            "realized_pnl": "4",
            "fees": {"USD": "0.08"},
            "volume": "110",
            "fills": 4,
            "last_fill_time": "2024-03-01T12:00:03+00:00",
        }
    ]
    assert rick(runner, "positions", "--broker", "nobody") == "no open positions\n"


def test_positions_leave_flat_ones_out(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    with Store.open(tmp_path / "rick.db") as store:
        store.record(fills=[fill("buy", "1", "10", 0), fill("sell", "1", "11", 1)])
    assert rick(runner, "positions", "--json") == "[]\n"
    assert json.loads(rick(runner, "pnl", "--json"))["paper"]["realized_pnl"] == {"USD": "1"}


def test_pnl(runner: CliRunner, home: Path) -> None:
    out = rick(runner, "pnl")
    assert out == (
        "alpaca: no account snapshot yet\n"
        "  instrument  realized  fees  volume  fills  position\n"
        "  AAPL        0         0     600.80  1      4\n"
        "  total realized: 0; fees: 0\n"
        "\n"
        "paper: equity 1003.50 USD (+3.50 since 2024-03-01 12:00:00 UTC), balance 1004.00, "
        "as of 2024-03-01 12:00:10 UTC\n"
        "  instrument  realized  fees      volume   fills  position\n"
        "  EUR_USD     4 USD     0.08 USD  110 USD  4      -2\n"
        "  total realized: 4 USD; fees: 0.08 USD\n"
    )
    summary = json.loads(rick(runner, "pnl", "--json"))
    assert summary["paper"] == {
        "account": {
            "broker": "paper",
            "currency": "USD",
            "balance": "1004.00",
            "equity": "1003.50",
            "margin_used": "0",
            "margin_available": "0",
            "time": "2024-03-01T12:00:10+00:00",
            "first_equity": "1000.00",
            "first_time": "2024-03-01T12:00:00+00:00",
            "equity_change": "3.50",
        },
        "realized_pnl": {"USD": "4"},
        "fees": {"USD": "0.08"},
        "instruments": [
            {
                "instrument": "EUR_USD",
                "quote_currency": "USD",
                "realized_pnl": "4",
                "fees": {"USD": "0.08"},
                "volume": "110",
                "fills": 4,
                "position": "-2",
            }
        ],
    }
    assert summary["alpaca"]["account"] is None
    assert list(json.loads(rick(runner, "pnl", "--json", "--broker", "alpaca"))) == ["alpaca"]
    assert (
        rick(runner, "pnl", "--broker", "nobody")
        == "no fills and no account snapshots for nobody\n"
    )


@pytest.mark.parametrize(
    ("command", "empty"), [("orders", "[]"), ("fills", "[]"), ("positions", "[]"), ("pnl", "{}")]
)
def test_no_store_yet_is_said_and_not_created(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, empty: str
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "rick.db"
    result = runner.invoke(_build_cli(), [command])
    assert result.exit_code == 0
    assert result.stdout == f"no store at {path} yet: run `rick run` first\n"
    result = runner.invoke(_build_cli(), [command, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(empty)
    assert f"no store at {path} yet" in result.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", ["orders", "fills", "positions", "pnl"])
def test_the_config_file_says_where_the_store_is(
    runner: CliRunner, home: Path, tmp_path: Path, command: str
) -> None:
    config = tmp_path / "elsewhere" / "rick.toml"
    config.parent.mkdir()
    config.write_text(f'[store]\npath = "{home / "rick.db"}"\n')
    assert json.loads(rick(runner, command, "--json", "--config", str(config)))
    config.write_text('[store]\npath = "other.db"\n')
    out = rick(runner, command, "--config", str(config))
    assert out.startswith("no store at ")
    assert "other.db yet" in out


@pytest.mark.parametrize("command", ["orders", "fills", "positions", "pnl"])
def test_a_store_from_a_newer_rick_is_refused_untouched(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("RICK_HOME", str(tmp_path))
    with sqlite3.connect(tmp_path / "rick.db") as db:
        db.execute("PRAGMA user_version = 999")
    before = (tmp_path / "rick.db").read_bytes()
    result = runner.invoke(_build_cli(), [command])
    assert result.exit_code == 1
    assert "has schema version 999" in result.output and "Upgrade rick-core" in result.output
    assert (tmp_path / "rick.db").read_bytes() == before


def test_read_commands_do_not_write(runner: CliRunner, home: Path) -> None:
    with Store.open(home / "rick.db") as store:
        store._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = (home / "rick.db").read_bytes()
    for command in ("orders", "fills", "positions", "pnl"):
        rick(runner, command)
        rick(runner, command, "--json")
    assert (home / "rick.db").read_bytes() == before
    assert (home / "rick.db-wal").stat().st_size == 0 if (home / "rick.db-wal").exists() else True
