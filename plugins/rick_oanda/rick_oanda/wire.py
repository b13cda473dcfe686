"""Translation between v20 JSON and rick's model, both ways. Pure functions: no I/O.

Shapes follow OANDA's published v20 definitions (Account, Instrument,
ClientPrice, Order, Trade, Position, Transaction). Money and prices are
decimal strings at the venue and ``Decimal`` here; units are signed (negative
for a sell); times are RFC 3339 with up to nine fractional digits, read as
timezone-aware UTC (to the microsecond).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from rick_core.broker import HEARTBEAT, Heartbeat, OrderRejected, Unsupported
from rick_core.model import (
    Account,
    AssetClass,
    Fill,
    Instrument,
    ModelError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    TimeInForce,
)

__all__ = [
    "FOREIGN_PREFIX",
    "OrderCache",
    "PriceParser",
    "account_from",
    "fill_from",
    "instrument_from",
    "order_body",
    "order_from",
    "parse_time",
    "positions_from",
    "protection_id",
    "request_from",
]

_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
"""rick's client order id rule (:mod:`rick_core.model`)."""

FOREIGN_PREFIX: Final = "oanda-"
"""Client order id given to an order rick did not place: ``oanda-<v20 order id>``."""

ENTRY_TYPES: Final = {
    "MARKET": OrderType.MARKET,
    "LIMIT": OrderType.LIMIT,
    "STOP": OrderType.STOP,
    "MARKET_IF_TOUCHED": OrderType.MARKET_IF_TOUCHED,
}
"""v20 order types that are entries (rick orders); the rest hang on trades."""

V20_TYPES: Final = {kind: name for name, kind in ENTRY_TYPES.items()}

DEPENDENT_TYPES: Final = {
    "TAKE_PROFIT": "take_profit",
    "STOP_LOSS": "stop_loss",
    "GUARANTEED_STOP_LOSS": "stop_loss",
    "TRAILING_STOP_LOSS": "trailing_stop",
}
"""v20 orders attached to a trade, and the tag rick gives their fills."""

CREATE_TRANSACTIONS: Final = {
    "MARKET_ORDER": "MARKET",
    "LIMIT_ORDER": "LIMIT",
    "STOP_ORDER": "STOP",
    "MARKET_IF_TOUCHED_ORDER": "MARKET_IF_TOUCHED",
}

REJECT_TRANSACTIONS: Final = {f"{name}_REJECT": kind for name, kind in CREATE_TRANSACTIONS.items()}

TIME_IN_FORCE: Final = {
    "GTC": TimeInForce.GTC,
    "GTD": TimeInForce.GTD,
    "GFD": TimeInForce.DAY,
    "FOK": TimeInForce.FOK,
    "IOC": TimeInForce.IOC,
}
V20_TIME_IN_FORCE: Final = {tif: name for name, tif in TIME_IN_FORCE.items()}

MARKET_TIME_IN_FORCE: Final = frozenset({TimeInForce.FOK, TimeInForce.IOC})
PENDING_TIME_IN_FORCE: Final = frozenset({TimeInForce.GTC, TimeInForce.GTD, TimeInForce.DAY})
ALLOWED_TIME_IN_FORCE: Final = {
    OrderType.MARKET: MARKET_TIME_IN_FORCE,  # "Restricted to FOK or IOC for a MarketOrder"
    OrderType.LIMIT: PENDING_TIME_IN_FORCE | MARKET_TIME_IN_FORCE,
    OrderType.STOP: PENDING_TIME_IN_FORCE | MARKET_TIME_IN_FORCE,
    OrderType.MARKET_IF_TOUCHED: PENDING_TIME_IN_FORCE,  # "Restricted to GTC, GFD and GTD"
}
"""Time in force v20 takes for each entry order type (its OrderRequest definitions)."""

ORDER_STATES: Final = {
    "PENDING": OrderStatus.ACCEPTED,
    "TRIGGERED": OrderStatus.ACCEPTED,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELED,
}

_COMMODITY_CFDS: Final = frozenset(
    {"BCO", "WTICO", "NATGAS", "CORN", "SOYBN", "SUGAR", "WHEAT", "XCU"}
)


# ---------------------------------------------------------------------------
# scalars


def parse_time(value: str) -> datetime:
    """An RFC 3339 time of the venue (``2026-11-24T10:15:42.123456789Z``) as aware UTC."""
    if value.endswith("Z"):
        head, _, fraction = value[:-1].partition(".")
        text = f"{head}.{fraction[:6]}+00:00" if fraction else f"{head}+00:00"
    else:
        text = value
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(value: datetime) -> str:
    """An aware time as v20 RFC 3339 (UTC, nine fractional digits)."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}000Z"


def _decimal(value: Any, what: str) -> Decimal:
    try:
        result = Decimal(value) if isinstance(value, str | int) else Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        raise ModelError(f"{what}: {value!r} is not a number") from None
    if not result.is_finite():
        raise ModelError(f"{what}: {value!r} is not a finite number")
    return result


def _price(details: Any) -> Decimal | None:
    """The price of v20 TakeProfitDetails / StopLossDetails (or an Order), if any."""
    if isinstance(details, Mapping) and details.get("price") is not None:
        return _decimal(details["price"], "price")
    return None


def _distance(details: Any) -> Decimal | None:
    """The distance of v20 TrailingStopLossDetails, if any."""
    if isinstance(details, Mapping) and details.get("distance") is not None:
        return _decimal(details["distance"], "distance")
    return None


def _steps(increment: Decimal | None) -> int:
    if increment is None:
        return 8
    exponent = increment.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def format_price(value: Decimal, instrument: Instrument) -> str:
    """``value`` rounded to the instrument's display precision (half even), as v20 text."""
    places = _steps(instrument.price_increment)
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN))


def format_units(quantity: Decimal, side: Side, instrument: Instrument) -> str:
    """Signed units as v20 text; refuses a quantity finer than the trade units precision
    (rounding would change the exposure asked for)."""
    places = _steps(instrument.size_increment)
    exact = quantity.quantize(Decimal(1).scaleb(-places))
    if exact != quantity:
        raise OrderRejected(
            f"quantity {quantity} of {instrument.symbol} is finer than its trade units "
            f"precision ({places} decimal places): use a multiple of {instrument.size_increment}",
            code="UNITS_PRECISION_EXCEEDED",
        )
    return str(exact if side is Side.BUY else -exact)


# ---------------------------------------------------------------------------
# reference data


def instrument_from(data: Mapping[str, Any]) -> Instrument:
    """An instrument of GET /v3/accounts/{id}/instruments."""
    name = str(data["name"])
    kind = str(data.get("type", "CURRENCY"))
    base, _, quote = name.partition("_")
    if kind == "CURRENCY":
        asset_class = AssetClass.FX
    elif kind == "METAL" or base in _COMMODITY_CFDS:
        asset_class = AssetClass.COMMODITY
    else:
        asset_class = AssetClass.INDEX
    display = int(data.get("displayPrecision", 5))
    units = int(data.get("tradeUnitsPrecision", 0))
    minimum = data.get("minimumTradeSize")
    return Instrument(
        symbol=name,
        asset_class=asset_class,
        quote_currency=quote,
        base=base,
        price_increment=Decimal(1).scaleb(-display),
        size_increment=Decimal(1).scaleb(-units),
        min_size=None if minimum is None else _decimal(minimum, f"{name} minimumTradeSize"),
    )


def account_from(data: Mapping[str, Any], broker: str) -> Account:
    """The ``account`` of GET /v3/accounts/{id}/summary."""
    return Account(
        broker=broker,
        currency=str(data["currency"]),
        balance=_decimal(data["balance"], "balance"),
        equity=_decimal(data.get("NAV", data["balance"]), "NAV"),
        margin_used=_decimal(data.get("marginUsed", "0"), "marginUsed"),
        margin_available=_decimal(data.get("marginAvailable", "0"), "marginAvailable"),
    )


# ---------------------------------------------------------------------------
# prices


class PriceParser:
    """Lines of the pricing stream (and prices of GET /pricing) into quotes.

    Counts what it cannot use in :attr:`dropped` (a one-sided or crossed book,
    a line that is not JSON) instead of raising: one bad message must not
    end a stream.
    """

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.parsed = 0
        self.dropped = 0
        self._last_time = ""
        self._last_parsed: datetime | None = None

    def line(self, raw: bytes) -> Quote | Heartbeat | None:
        """One line of the stream: a quote, a heartbeat, or None (dropped)."""
        try:
            data = json.loads(raw)
            kind = data.get("type")
        except (ValueError, AttributeError, RecursionError):
            self.dropped += 1
            return None
        if kind == "HEARTBEAT":
            return HEARTBEAT
        return self.price(data)

    def price(self, data: Mapping[str, Any]) -> Quote | None:
        """A v20 ClientPrice as a quote, or None (counted in :attr:`dropped`)."""
        try:
            bids = data["bids"]
            asks = data["asks"]
            if not bids or not asks:
                self.dropped += 1
                return None
            best_bid = bids[0]
            best_ask = asks[0]
            when = data["time"]
            parsed = self._last_parsed
            if when != self._last_time or parsed is None:  # one parse per venue timestamp
                parsed = self._last_parsed = parse_time(when)
                self._last_time = when
            quote = Quote(
                instrument=data["instrument"],
                bid=Decimal(best_bid["price"]),
                ask=Decimal(best_ask["price"]),
                time=parsed,
                source=self.broker,
                bid_size=Decimal(best_bid["liquidity"]) if "liquidity" in best_bid else None,
                ask_size=Decimal(best_ask["liquidity"]) if "liquidity" in best_ask else None,
            )
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError):
            self.dropped += 1
            return None
        self.parsed += 1
        return quote


# ---------------------------------------------------------------------------
# orders: rick -> v20


def protection_id(client_order_id: str, suffix: str) -> str:
    """The client id of an order's stop loss (``.sl``) or take profit (``.tp``),
    within rick's 64 characters."""
    tail = f".{suffix}"
    return client_order_id[: 64 - len(tail)] + tail


def order_body(request: OrderRequest, instrument: Instrument) -> dict[str, Any]:
    """The ``order`` of POST /v3/accounts/{id}/orders for ``request``.

    Prices are rounded to the instrument's display precision; units must
    already be on its trade units precision. Raises :class:`Unsupported` for
    what v20 cannot take (a trailing stop entry, a market order that rests).
    """
    v20_type = V20_TYPES.get(request.type)
    if v20_type is None:
        raise Unsupported(
            f"OANDA v20 has no {request.type.value} entry orders (rick emulates them)"
        )
    tif = request.time_in_force
    allowed = ALLOWED_TIME_IN_FORCE[request.type]
    if tif not in allowed:
        names = ", ".join(sorted(t.value for t in allowed))
        raise Unsupported(
            f"OANDA {request.type.value} orders take time in force {names}, not {tif.value}"
        )
    order: dict[str, Any] = {
        "type": v20_type,
        "instrument": request.instrument,
        "units": format_units(request.quantity, request.side, instrument),
        "timeInForce": V20_TIME_IN_FORCE[tif],
        "positionFill": "DEFAULT",
    }
    if request.type is OrderType.LIMIT:
        assert request.limit_price is not None
        order["price"] = format_price(request.limit_price, instrument)
    elif request.type is not OrderType.MARKET:
        assert request.stop_price is not None
        order["price"] = format_price(request.stop_price, instrument)
    if request.type is not OrderType.MARKET:
        order["triggerCondition"] = "DEFAULT"
    if tif is TimeInForce.GTD:
        assert request.expire_time is not None
        order["gtdTime"] = format_time(request.expire_time)
    extensions: dict[str, str] = {"id": request.client_order_id}
    if request.tag:
        extensions["tag"] = request.tag[:128]
    order["clientExtensions"] = extensions
    coid = request.client_order_id
    if request.stop_loss is not None:
        order["stopLossOnFill"] = {
            "price": format_price(request.stop_loss, instrument),
            "timeInForce": "GTC",
            "clientExtensions": {"id": protection_id(coid, "sl"), "tag": "stop_loss"},
        }
    if request.trailing_stop is not None:
        order["trailingStopLossOnFill"] = {
            "distance": format_price(request.trailing_stop, instrument),
            "timeInForce": "GTC",
            "clientExtensions": {"id": protection_id(coid, "ts"), "tag": "trailing_stop"},
        }
    if request.take_profit is not None:
        order["takeProfitOnFill"] = {
            "price": format_price(request.take_profit, instrument),
            "timeInForce": "GTC",
            "clientExtensions": {"id": protection_id(coid, "tp"), "tag": "take_profit"},
        }
    return order


# ---------------------------------------------------------------------------
# orders: v20 -> rick


def _side_and_quantity(units: Any, what: str) -> tuple[Side, Decimal]:
    value = _decimal(units, what)
    if value == 0:
        raise ModelError(f"{what}: zero units")
    return (Side.BUY if value > 0 else Side.SELL), abs(value)


def _usable_id(value: Any) -> bool:
    """Whether ``value`` can be a rick client order id (other software may use
    ids rick's model does not take: spaces, more than 64 characters)."""
    return isinstance(value, str) and _CLIENT_ID.fullmatch(value) is not None


def _client_id(data: Mapping[str, Any], order_id: Any) -> tuple[str, str]:
    extensions = data.get("clientExtensions")
    if isinstance(extensions, Mapping):
        coid = extensions.get("id")
        tag = extensions.get("tag") or ""
        if _usable_id(coid):
            return str(coid), str(tag)
        return f"{FOREIGN_PREFIX}{order_id}", str(tag)
    return f"{FOREIGN_PREFIX}{order_id}", ""


def request_from(data: Mapping[str, Any], v20_type: str, order_id: Any) -> OrderRequest:
    """The request of a v20 entry Order, or of the transaction that created one."""
    side, quantity = _side_and_quantity(data["units"], f"order {order_id} units")
    kind = ENTRY_TYPES[v20_type]
    coid, tag = _client_id(data, order_id)
    tif = TIME_IN_FORCE.get(
        str(data.get("timeInForce", "FOK" if kind is OrderType.MARKET else "GTC"))
    )
    price = _price(data)
    gtd = data.get("gtdTime") if tif is TimeInForce.GTD else None
    return OrderRequest(
        instrument=str(data["instrument"]),
        side=side,
        quantity=quantity,
        type=kind,
        limit_price=price if kind is OrderType.LIMIT else None,
        stop_price=price if kind in (OrderType.STOP, OrderType.MARKET_IF_TOUCHED) else None,
        time_in_force=tif or TimeInForce.GTC,
        expire_time=parse_time(gtd) if isinstance(gtd, str) else None,
        stop_loss=_price(data.get("stopLossOnFill")),
        take_profit=_price(data.get("takeProfitOnFill")),
        trailing_stop=_distance(data.get("trailingStopLossOnFill")),
        client_order_id=coid,
        tag=tag,
    )


def order_from(data: Mapping[str, Any], broker: str, fill: Fill | None = None) -> Order | None:
    """A v20 Order (GET /orders, /pendingOrders, /orders/{specifier}) as a rick
    Order; None for orders that hang on a trade (stop loss, take profit,
    trailing stop: rick shows them as the position's protection).

    A FILLED order needs ``fill``, its filling transaction (v20's Order has no
    fill price); without it, :class:`ValueError`."""
    v20_type = str(data.get("type"))
    if v20_type not in ENTRY_TYPES:
        return None
    order_id = data["id"]
    request = request_from(data, v20_type, order_id)
    state = str(data.get("state", "PENDING"))
    status = ORDER_STATES.get(state, OrderStatus.ACCEPTED)
    created = parse_time(data["createTime"]) if "createTime" in data else None
    updated = created
    filled = Decimal(0)
    average = None
    if status is OrderStatus.FILLED:
        if fill is None:
            raise ValueError(f"order {order_id} is filled: its fill transaction is needed")
        filled = fill.quantity
        average = fill.price
        updated = fill.time
    elif status is OrderStatus.CANCELED and data.get("cancelledTime"):
        updated = parse_time(data["cancelledTime"])
    fields: dict[str, Any] = {}
    if created is not None:
        fields["created_at"] = created
        fields["updated_at"] = updated or created
    return Order(
        request=request,
        broker=broker,
        status=status,
        venue_order_id=str(order_id),
        filled_quantity=filled,
        average_fill_price=average,
        **fields,
    )


# ---------------------------------------------------------------------------
# transactions


def fill_from(tx: Mapping[str, Any], broker: str, currency: str) -> Fill:
    """An ORDER_FILL transaction as a rick fill (its id is the transaction id)."""
    order_id = tx.get("orderID", "")
    side, quantity = _side_and_quantity(tx["units"], f"fill {tx['id']} units")
    client = tx.get("clientOrderID")
    price = tx.get("fullVWAP")  # "price" is deprecated
    if price is None:
        price = _trade_vwap(tx)
    if price is None:
        price = tx["price"]
    fee = _decimal(tx.get("commission", "0"), "commission")
    fee += _decimal(tx.get("guaranteedExecutionFee", "0"), "guaranteedExecutionFee")
    return Fill(
        fill_id=str(tx["id"]),
        client_order_id=str(client) if _usable_id(client) else f"{FOREIGN_PREFIX}{order_id}",
        instrument=str(tx["instrument"]),
        side=side,
        quantity=quantity,
        price=_decimal(price, "fill price"),
        time=parse_time(tx["time"]),
        broker=broker,
        fee=abs(fee),
        fee_currency=currency,
        venue_order_id=str(order_id) if order_id else None,
    )


def _trade_vwap(tx: Mapping[str, Any]) -> Decimal | None:
    """The average price of a fill from its trade parts (opened, closed, reduced)."""
    parts = [tx.get("tradeOpened"), tx.get("tradeReduced"), *(tx.get("tradesClosed") or [])]
    units = Decimal(0)
    cost = Decimal(0)
    for part in parts:
        if isinstance(part, Mapping) and part.get("price") is not None:
            size = abs(_decimal(part["units"], "trade units"))
            units += size
            cost += size * _decimal(part["price"], "trade price")
    return cost / units if units else None


class OrderCache:
    """What the transactions stream needs to turn a fill or cancel into a whole
    rick Order: the requests of the orders seen created, by v20 order id.

    Bounded: the oldest entries go first once :attr:`limit` is reached
    (an order looked up again after that is fetched from the venue).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._orders: dict[str, Order] = {}

    def __len__(self) -> int:
        return len(self._orders)

    def get(self, order_id: str) -> Order | None:
        return self._orders.get(order_id)

    def put(self, order: Order) -> Order:
        if order.venue_order_id is None:
            return order
        orders = self._orders
        orders.pop(order.venue_order_id, None)
        orders[order.venue_order_id] = order
        while len(orders) > self.limit:
            del orders[next(iter(orders))]
        return order


def created_at(data: Mapping[str, Any]) -> datetime | None:
    """When a v20 Order was created (its ``createTime``), if it says."""
    when = data.get("createTime")
    return parse_time(when) if isinstance(when, str) else None


def created_order(tx: Mapping[str, Any], broker: str) -> Order:
    """The rick order an entry-order create transaction (MARKET_ORDER, ...) made."""
    v20_type = CREATE_TRANSACTIONS[str(tx["type"])]
    when = parse_time(tx["time"])
    return Order(
        request=request_from(tx, v20_type, tx["id"]),
        broker=broker,
        status=OrderStatus.ACCEPTED,
        venue_order_id=str(tx["id"]),
        created_at=when,
        updated_at=when,
    )


def rejected_order(tx: Mapping[str, Any], broker: str) -> Order:
    """The rick order an entry-order reject transaction (MARKET_ORDER_REJECT, ...) refused."""
    v20_type = REJECT_TRANSACTIONS[str(tx["type"])]
    when = parse_time(tx["time"])
    reason = str(tx.get("rejectReason") or "rejected")
    return Order(
        request=request_from(tx, v20_type, tx["id"]),
        broker=broker,
        status=OrderStatus.REJECTED,
        created_at=when,
        updated_at=when,
        reject_reason=reason,
    )


def filled_order(order: Order, fill: Fill) -> Order:
    """``order`` after ``fill`` (v20 fills an entry order whole, in one transaction)."""
    filled = order.filled_quantity + fill.quantity
    if order.average_fill_price is None or order.filled_quantity == 0:
        average = fill.price
    else:
        average = (
            order.average_fill_price * order.filled_quantity + fill.price * fill.quantity
        ) / filled
    status = (
        OrderStatus.FILLED if filled >= order.request.quantity else OrderStatus.PARTIALLY_FILLED
    )
    return Order(
        request=order.request,
        broker=order.broker,
        status=status,
        venue_order_id=order.venue_order_id,
        filled_quantity=filled,
        average_fill_price=average,
        created_at=order.created_at,
        updated_at=max(fill.time, order.created_at),
    )


def cancelled_order(order: Order, tx: Mapping[str, Any]) -> Order:
    """``order`` after an ORDER_CANCEL transaction (its reason kept)."""
    when = parse_time(tx["time"])
    reason = str(tx.get("reason") or "")
    status = OrderStatus.EXPIRED if reason == "TIME_IN_FORCE_EXPIRED" else OrderStatus.CANCELED
    return Order(
        request=order.request,
        broker=order.broker,
        status=status,
        venue_order_id=order.venue_order_id,
        filled_quantity=order.filled_quantity,
        average_fill_price=order.average_fill_price,
        created_at=order.created_at,
        updated_at=max(when, order.created_at),
        reject_reason=reason or None,
    )


# ---------------------------------------------------------------------------
# positions


def positions_from(
    positions: Iterable[Mapping[str, Any]],
    trades: Iterable[Mapping[str, Any]],
    broker: str,
) -> list[Position]:
    """Open positions (GET /openPositions), netted, with the protection of
    their open trades (GET /openTrades): the stop loss and take profit that
    would trigger first when trades carry different ones."""
    stops: dict[str, list[Decimal]] = {}
    takes: dict[str, list[Decimal]] = {}
    for trade in trades:
        symbol = str(trade["instrument"])
        stop = _price(trade.get("stopLossOrder"))
        if stop is not None:
            stops.setdefault(symbol, []).append(stop)
        take = _price(trade.get("takeProfitOrder"))
        if take is not None:
            takes.setdefault(symbol, []).append(take)
    result: list[Position] = []
    for data in positions:
        symbol = str(data["instrument"])
        long = data.get("long") or {}
        short = data.get("short") or {}
        long_units = _decimal(long.get("units", "0"), f"{symbol} long units")
        short_units = _decimal(short.get("units", "0"), f"{symbol} short units")
        net = long_units + short_units
        if net == 0:
            continue
        side = long if net > 0 else short
        average = _decimal(side.get("averagePrice"), f"{symbol} averagePrice")
        unrealized = _decimal(data.get("unrealizedPL", "0"), f"{symbol} unrealizedPL")
        stop_list = stops.get(symbol, [])
        take_list = takes.get(symbol, [])
        result.append(
            Position(
                instrument=symbol,
                quantity=net,
                average_price=average,
                broker=broker,
                unrealized_pnl=unrealized,
                stop_loss=(max(stop_list) if net > 0 else min(stop_list)) if stop_list else None,
                take_profit=(min(take_list) if net > 0 else max(take_list)) if take_list else None,
            )
        )
    return result
