"""The OANDA v20 broker: rick's broker contract over v20 REST and streams.

How the contract maps onto v20:

- **Orders** are v20 entry orders (market, limit, stop, market-if-touched)
  with ``clientExtensions.id`` = rick's client order id, so every lookup can
  use ``@<client id>``. Stop loss and take profit ride on the order
  (``stopLossOnFill`` / ``takeProfitOnFill``, with client ids ``<id>.sl`` and
  ``<id>.tp`` so their fills are recognisable). Trailing stop entries and
  stop-limit orders do not exist at v20: rick emulates them.
- **Idempotency:** a create answered ``CLIENT_ORDER_ID_ALREADY_EXISTS`` is the
  same request sent twice: the existing order is returned, nothing new made.
- **A market order v20 cancels at once** (no margin, no liquidity) is an
  ``OrderRejected`` with the venue's reason, as the engine expects.
- **Positions** are v20's netted open positions; their stop loss and take
  profit are those of their open trades (v20 protects trades, not positions),
  and :meth:`replace_position_protection` sets them on every open trade.
- **Changing an order's protection** replaces the order (PUT /orders): v20
  gives the replacement a new id, the client id stays.
- **Streams:** the pricing stream and the transactions stream, each a chunked
  line stream with a heartbeat every 5 s. After (re)opening the transactions
  stream, transactions since the last one seen are fetched (``sinceid``) and
  delivered first, so a reconnect loses nothing; transaction ids deduplicate.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, TypeVar
from urllib.parse import quote as urlquote
from urllib.parse import urlsplit

import attrs
import structlog

from rick_core.broker import (
    HEARTBEAT,
    KEEP,
    AuthenticationFailed,
    Broker,
    BrokerError,
    BrokerEvent,
    Capabilities,
    Heartbeat,
    Keep,
    NotFound,
    OrderRejected,
    TemporarilyUnavailable,
    Unsupported,
)
from rick_core.components import ComponentSetup
from rick_core.model import (
    Account,
    Fill,
    Instrument,
    ModelError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    TimeInForce,
    utc_now,
)
from rick_core.symbols import SeparatorSymbolMap
from rick_oanda import wire
from rick_oanda.http import V20Error, V20Http
from rick_oanda.options import OandaOptions

__all__ = ["CAPABILITIES", "OandaBroker"]

log = structlog.get_logger("rick.oanda")

T = TypeVar("T")

CAPABILITIES: Final = Capabilities(
    order_types={OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.MARKET_IF_TOUCHED},
    time_in_force={
        TimeInForce.GTC,
        TimeInForce.GTD,
        TimeInForce.DAY,
        TimeInForce.IOC,
        TimeInForce.FOK,
    },
    attached_stop_loss=True,
    attached_take_profit=True,
    attached_trailing_stop=True,  # trailingStopLossOnFill
    modify_order_protection=True,
    modify_position_protection=True,
    client_order_ids=True,
    fractional_quantity=True,  # per instrument: tradeUnitsPrecision says (checked per order)
    short_selling=True,
    streaming_quotes=True,
    streaming_events=True,
)
"""What v20 does natively. Time in force is also checked per order type:
market orders are FOK or IOC, pending orders GTC, GTD or GFD (day)."""

ALREADY_EXISTS: Final = "CLIENT_ORDER_ID_ALREADY_EXISTS"

CLOCK_MARGIN: Final = timedelta(minutes=1)
"""How far behind ours the venue's clock may be: v20 refuses a transactions
range that starts after its request time ("Time is in the future")."""


class OandaBroker(Broker):
    """One v20 account. See the module documentation for the mapping."""

    def __init__(self, setup: ComponentSetup) -> None:
        self.name = setup.name
        self.options = OandaOptions(setup)
        self.capabilities = CAPABILITIES
        self.symbols = SeparatorSymbolMap("_")
        self.quote_silence = self.options.quote_silence
        self.event_silence = self.options.event_silence
        self._credentials = setup.credentials
        self.real_orders = setup.real_orders
        """Whether rick's trading mode lets this run send real orders (canary, live)."""
        self.http = V20Http(
            broker=self.name,
            rest_url=self.options.rest_url,
            stream_url=self.options.stream_url,
            timeout=self.options.timeout,
            requests_per_second=self.options.requests_per_second,
            connections_per_second=self.options.connections_per_second,
            rate_limit_retries=self.options.rate_limit_retries,
        )
        self._account_path = f"/v3/accounts/{urlquote(self.options.account_id, safe='')}"
        self._instruments: dict[str, Instrument] = {}
        self.currency = ""
        self.last_transaction_id: int | None = None
        """The newest transaction id of the account seen in any answer."""
        self.delivered: int | None = None
        """The newest transaction the event stream delivered (or, before it
        opened, the account's newest at connect): a reopened stream resumes
        after it, and anything at or before it is not delivered again."""
        self.orders = wire.OrderCache()
        self.prices = wire.PriceParser(self.name)
        self.replayed = 0
        """Transactions delivered from ``sinceid`` after the stream (re)opened."""

    def __repr__(self) -> str:
        return (
            f"OandaBroker(name={self.name!r}, account={self.options.account_id!r}, "
            f"environment={self.options.environment.name!r})"
        )

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        try:
            token = self._credentials.get("token")
        except KeyError:
            raise AuthenticationFailed(
                f"no OANDA API token in the vault: store it with `rick creds set {self.name} "
                "token` (make one at OANDA: Manage API Access)",
                broker=self.name,
            ) from None
        if not token.strip() or any(c.isspace() for c in token.strip()):
            raise AuthenticationFailed(
                f"the stored OANDA token is not a token: set it again with `rick creds set "
                f"{self.name} token`",
                broker=self.name,
            )
        await self.http.aclose()
        self.http.open(token.strip())
        summary = await self._get(f"{self._account_path}/summary", "account summary")
        account = summary.get("account") or {}
        self.currency = str(account.get("currency") or "")
        self._note_transaction(summary.get("lastTransactionID"))
        if self.delivered is None:
            self.delivered = self.last_transaction_id
        await self.instruments()
        log.info(
            "connected",
            broker=self.name,
            instruments=len(self._instruments),
            **self.options.describe(),
        )

    async def close(self) -> None:
        await self.http.aclose()

    # -- helpers -------------------------------------------------------------

    async def _get(
        self, path: str, what: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        _, data = await self.http.request("GET", path, what=what, params=params)
        return data

    def _note_transaction(self, value: Any) -> None:
        try:
            number = int(value)
        except (TypeError, ValueError):
            return
        if self.last_transaction_id is None or number > self.last_transaction_id:
            self.last_transaction_id = number

    async def _instrument(self, symbol: str) -> Instrument:
        found = self._instruments.get(symbol)
        if found is None and self.http.is_open and not self._instruments:
            await self.instruments()
            found = self._instruments.get(symbol)
        if found is None:
            raise NotFound(
                f"{symbol} is not an instrument of OANDA account {self.options.account_id}",
                broker=self.name,
            )
        return found

    def _parse(self, what: str, build: Callable[..., T], *args: Any) -> T:
        """Run a wire conversion; a venue answer rick cannot read is a BrokerError."""
        try:
            return build(*args)
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise BrokerError(
                f"{what}: unexpected v20 answer ({type(exc).__name__}: {exc})", broker=self.name
            ) from None

    def _spec(self, order: Order) -> str:
        if order.venue_order_id:
            return urlquote(order.venue_order_id, safe="")
        return "@" + urlquote(order.client_order_id, safe="")

    # -- orders --------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> Order:
        if self.options.real_money and not self.real_orders:
            raise Unsupported(
                f"{self.name} is a live (real money) OANDA account: rick sends it orders only in "
                "the canary or live trading mode (rick mode canary)",
                broker=self.name,
            )
        instrument = self._instruments.get(request.instrument)
        if instrument is None:
            raise OrderRejected(
                f"{request.instrument} is not an instrument of OANDA account "
                f"{self.options.account_id}",
                broker=self.name,
                code="INSTRUMENT_UNKNOWN",
            )
        try:
            body = wire.order_body(request, instrument)
        except OrderRejected as exc:
            raise OrderRejected(exc.reason, broker=self.name, code=exc.code) from None
        except Unsupported as exc:
            raise Unsupported(str(exc), broker=self.name) from None
        what = f"order {request.client_order_id}"
        status, data = await self.http.send(
            "POST", f"{self._account_path}/orders", what=what, body={"order": body}
        )
        self._note_transaction(data.get("lastTransactionID"))
        if status >= 300:
            error = self._order_error(status, data, what)
            if isinstance(error, OrderRejected) and error.code == ALREADY_EXISTS:
                return await self._existing(request)
            raise error
        return self._placed(request, data)

    def _order_error(self, status: int, data: dict[str, Any], what: str) -> BrokerError:
        # The reject transaction's key names what was refused: orderReject...,
        # stopLossOrderReject..., longOrderReject..., orderCancelReject...
        reject = next(
            (
                value
                for key, value in data.items()
                if key.endswith("RejectTransaction") and isinstance(value, dict)
            ),
            None,
        )
        code = None
        if isinstance(reject, dict):
            code = reject.get("rejectReason")
        code = code or data.get("errorCode")
        message = data.get("errorMessage") or (str(code) if code else f"HTTP {status}")
        if status == 404 and not isinstance(reject, dict):
            return NotFound(f"{what}: {message}", broker=self.name)
        if status in (400, 404):
            error = OrderRejected(str(message), broker=self.name)
            error.code = str(code) if code else None
            if code and str(code) not in str(message):
                error.reason = f"{message} ({code})"
            return error
        return V20Error(f"{what}: {message}", broker=self.name, status=status, code=code)

    async def _existing(self, request: OrderRequest) -> Order:
        """The order already made with this client id (a repeated submit)."""
        found = await self.get_order(request.client_order_id)
        same = (
            found.instrument == request.instrument
            and found.request.side is request.side
            and found.request.quantity == request.quantity
        )
        if not same:
            raise OrderRejected(
                f"client order id {request.client_order_id} is already used by another order "
                f"({found.request.side.value} {found.request.quantity} {found.instrument})",
                broker=self.name,
                code=ALREADY_EXISTS,
            )
        return attrs.evolve(found, request=request)

    def _placed(
        self, request: OrderRequest, data: dict[str, Any], cancelled: str = "orderCancelTransaction"
    ) -> Order:
        """The order an accepted create made (201), or the venue's refusal of it.

        ``cancelled`` names the key of the new order's immediate cancel: a
        replace answer's ``orderCancelTransaction`` is the old order's, and
        the new one's is ``replacingOrderCancelTransaction``."""
        created = data.get("orderCreateTransaction") or {}
        fill = data.get("orderFillTransaction")
        cancel = data.get(cancelled)
        when = created.get("time")
        order = Order(
            request=request,
            broker=self.name,
            status=OrderStatus.ACCEPTED,
            venue_order_id=str(created["id"]) if "id" in created else None,
        )
        if isinstance(when, str):
            at = self._parse("order time", wire.parse_time, when)
            order = attrs.evolve(order, created_at=at, updated_at=at)
        if fill:
            parsed = self._parse("order fill", wire.fill_from, fill, self.name, self.currency)
            order = wire.filled_order(order, parsed)
        if cancel:
            reason = str(cancel.get("reason") or "cancelled by the venue")
            if order.filled_quantity == 0:
                raise OrderRejected(
                    _cancelled_at_once(reason),
                    broker=self.name,
                    code=reason,
                )
            order = wire.cancelled_order(order, cancel)
        self.orders.put(order)
        return order

    async def cancel_order(self, order: Order) -> Order:
        what = f"cancel of order {order.client_order_id}"
        status, data = await self.http.send(
            "PUT", f"{self._account_path}/orders/{self._spec(order)}/cancel", what=what
        )
        self._note_transaction(data.get("lastTransactionID"))
        if status < 300:
            cancel = data.get("orderCancelTransaction") or {}
            current = self.orders.get(str(cancel.get("orderID"))) or order
            cancelled = self._parse("order cancel", wire.cancelled_order, current, cancel)
            return attrs.evolve(cancelled, request=order.request)
        if status == 404:
            # Gone: already final (filled, cancelled), or never received.
            try:
                found = await self.get_order(order.client_order_id)
            except NotFound:
                raise NotFound(
                    f"{what}: the venue does not know the order", broker=self.name
                ) from None
            if found.status.is_final:
                return attrs.evolve(found, request=order.request)
        raise self._order_error(status, data, what)

    async def replace_order_protection(
        self,
        order: Order,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Order:
        current = await self.get_order(order.client_order_id)
        if current.status.is_final:
            raise OrderRejected(
                f"order {order.client_order_id} is {current.status.value}: its protection "
                "can no longer change",
                broker=self.name,
            )
        request = current.request
        changes: dict[str, Any] = {}
        if not isinstance(stop_loss, Keep):
            changes["stop_loss"] = stop_loss
        if not isinstance(take_profit, Keep):
            changes["take_profit"] = take_profit
        try:
            wanted = attrs.evolve(request, tag=order.request.tag, **changes)
        except ModelError as exc:
            raise OrderRejected(str(exc), broker=self.name) from None
        instrument = await self._instrument(wanted.instrument)
        body = wire.order_body(wanted, instrument)
        what = f"protection change of order {order.client_order_id}"
        status, data = await self.http.send(
            "PUT",
            f"{self._account_path}/orders/{self._spec(current)}",
            what=what,
            body={"order": body},
        )
        self._note_transaction(data.get("lastTransactionID"))
        if status >= 300:
            raise self._order_error(status, data, what)
        replaced = self._placed(wanted, data, "replacingOrderCancelTransaction")
        return attrs.evolve(
            replaced,
            request=attrs.evolve(
                order.request, stop_loss=wanted.stop_loss, take_profit=wanted.take_profit
            ),
            created_at=order.created_at,
        )

    async def replace_position_protection(
        self,
        instrument: str,
        *,
        stop_loss: Decimal | Keep | None = KEEP,
        take_profit: Decimal | Keep | None = KEEP,
    ) -> Position:
        info = await self._instrument(instrument)
        trades = await self.open_trades(instrument)
        if not trades:
            raise NotFound(f"no open position in {instrument}", broker=self.name)
        body: dict[str, Any] = {}
        if not isinstance(stop_loss, Keep):
            body["stopLoss"] = (
                None
                if stop_loss is None
                else {"price": wire.format_price(stop_loss, info), "timeInForce": "GTC"}
            )
        if not isinstance(take_profit, Keep):
            body["takeProfit"] = (
                None
                if take_profit is None
                else {"price": wire.format_price(take_profit, info), "timeInForce": "GTC"}
            )
        if body:
            for trade in trades:
                await self.set_trade_orders(str(trade["id"]), body)
        for position in await self.positions():
            if position.instrument == instrument:
                return position
        raise NotFound(f"no open position in {instrument}", broker=self.name)

    async def open_orders(self, instrument: str | None = None) -> list[Order]:
        data = await self._get(f"{self._account_path}/pendingOrders", "pending orders")
        self._note_transaction(data.get("lastTransactionID"))
        result: list[Order] = []
        for raw in data.get("orders") or []:
            order = self._parse("pending order", wire.order_from, raw, self.name)
            if order is None or (instrument is not None and order.instrument != instrument):
                continue
            result.append(self.orders.put(order))
        return result

    async def get_order(self, client_order_id: str) -> Order:
        return await self._order_at("@" + urlquote(client_order_id, safe=""), client_order_id)

    async def get_order_by_id(self, order_id: str) -> Order:
        """An entry order by its v20 id (with its fill price if filled)."""
        return await self._order_at(urlquote(order_id, safe=""), order_id)

    async def _order_at(self, spec: str, name: str) -> Order:
        """The entry order at v20 order specifier ``spec`` (an id or ``@client id``)."""
        data = await self._get(f"{self._account_path}/orders/{spec}", f"order {name}")
        raw = data.get("order") or {}
        fill = None
        if raw.get("state") == "FILLED" and raw.get("fillingTransactionID"):
            fill = await self._fill(str(raw["fillingTransactionID"]))
        order = self._parse("order", wire.order_from, raw, self.name, fill)
        if order is None:
            raise NotFound(
                f"order {name} is a {raw.get('type')} order of a trade, not an entry",
                broker=self.name,
            )
        if (
            order.status is OrderStatus.CANCELED
            and order.filled_quantity == 0
            and order.request.time_in_force in (TimeInForce.FOK, TimeInForce.IOC)
        ):
            # Cancelled as v20 made it (as place_order would have raised): rejected.
            reason = ""
            if raw.get("cancellingTransactionID"):
                cancel = await self._get(
                    f"{self._account_path}/transactions/"
                    f"{urlquote(str(raw['cancellingTransactionID']), safe='')}",
                    "order cancel",
                )
                reason = str((cancel.get("transaction") or {}).get("reason") or "")
            order = attrs.evolve(
                order, status=OrderStatus.REJECTED, reject_reason=_cancelled_at_once(reason)
            )
        return self.orders.put(order)

    async def _fill(self, transaction_id: str) -> Fill | None:
        """The fill transaction ``transaction_id``, or None if it is no fill."""
        data = await self._get(
            f"{self._account_path}/transactions/{urlquote(transaction_id, safe='')}",
            f"fill {transaction_id}",
        )
        tx = data.get("transaction") or {}
        if tx.get("type") != "ORDER_FILL":
            return None
        return self._parse("order fill", wire.fill_from, tx, self.name, self.currency)

    async def fills(self, since: datetime) -> list[Fill]:
        # Never ask from a time the venue may not have reached (400: "Time is in
        # the future"); the filter on fill.time below keeps the answer exact.
        start = min(since, utc_now() - CLOCK_MARGIN)
        params = {"from": wire.format_time(start), "type": "ORDER_FILL", "pageSize": "1000"}
        index = await self._get(f"{self._account_path}/transactions", "transactions", params)
        self._note_transaction(index.get("lastTransactionID"))
        found: list[Fill] = []
        seen: set[str] = set()
        for page in index.get("pages") or []:
            parts = urlsplit(str(page))
            data = await self.http.request(
                "GET",
                parts.path + (f"?{parts.query}" if parts.query else ""),
                what="transactions page",
            )
            for tx in data[1].get("transactions") or []:
                if tx.get("type") != "ORDER_FILL" or str(tx.get("id")) in seen:
                    continue
                fill = self._parse("order fill", wire.fill_from, tx, self.name, self.currency)
                if fill.time >= since:
                    seen.add(fill.fill_id)
                    found.append(fill)
        found.sort(key=lambda f: (f.time, int(f.fill_id) if f.fill_id.isdigit() else 0))
        return found

    # -- trades and positions (v20 endpoints beyond the contract) ------------

    async def open_trades(self, instrument: str | None = None) -> list[dict[str, Any]]:
        """v20 open trades (raw JSON), optionally of one instrument."""
        data = await self._get(f"{self._account_path}/openTrades", "open trades")
        trades = data.get("trades") or []
        return [t for t in trades if instrument is None or t.get("instrument") == instrument]

    async def trades(
        self, instrument: str | None = None, state: str = "OPEN"
    ) -> list[dict[str, Any]]:
        """v20 trades in ``state`` (OPEN, CLOSED, CLOSE_WHEN_TRADEABLE, ALL)."""
        params = {"state": state}
        if instrument:
            params["instrument"] = instrument
        data = await self._get(f"{self._account_path}/trades", "trades", params)
        return list(data.get("trades") or [])

    async def list_orders(
        self, state: str = "PENDING", instrument: str | None = None, count: int = 50
    ) -> list[Order]:
        """Entry orders in ``state`` (PENDING, FILLED, TRIGGERED, CANCELLED, ALL),
        newest first (GET /orders). Filled ones carry no fill price here: use
        :meth:`get_order` for that."""
        params = {"state": state, "count": str(count)}
        if instrument:
            params["instrument"] = instrument
        data = await self._get(f"{self._account_path}/orders", "orders", params)
        result: list[Order] = []
        for raw in data.get("orders") or []:
            if str(raw.get("type")) not in wire.ENTRY_TYPES:
                continue
            if raw.get("state") == "FILLED":
                result.append(await self.get_order_by_id(str(raw.get("id"))))
                continue
            order = self._parse("order", wire.order_from, raw, self.name)
            if order is not None:
                result.append(order)
        return result

    async def all_positions(self) -> list[dict[str, Any]]:
        """Every position the account has held, open or flat (GET /positions, raw v20)."""
        data = await self._get(f"{self._account_path}/positions", "positions")
        return list(data.get("positions") or [])

    async def set_trade_orders(self, trade_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create, replace or (with null) cancel a trade's takeProfit, stopLoss or
        trailingStopLoss (PUT /trades/{id}/orders)."""
        what = f"protection of trade {trade_id}"
        status, data = await self.http.send(
            "PUT",
            f"{self._account_path}/trades/{urlquote(trade_id, safe='')}/orders",
            what=what,
            body=body,
        )
        self._note_transaction(data.get("lastTransactionID"))
        if status >= 300:
            raise self._order_error(status, data, what)
        return data

    async def close_trade(self, trade_id: str, units: Decimal | None = None) -> dict[str, Any]:
        """Close a trade, whole or ``units`` of it (PUT /trades/{id}/close)."""
        what = f"close of trade {trade_id}"
        status, data = await self.http.send(
            "PUT",
            f"{self._account_path}/trades/{urlquote(trade_id, safe='')}/close",
            what=what,
            body={"units": "ALL" if units is None else str(units)},
        )
        if status >= 300:
            raise self._order_error(status, data, what)
        return data

    async def close_position(self, instrument: str) -> dict[str, Any]:
        """Close the whole position in ``instrument``, long and short
        (PUT /positions/{instrument}/close)."""
        what = f"close of position {instrument}"
        positions = {p.instrument: p for p in await self.positions()}
        held = positions.get(instrument)
        if held is None:
            raise NotFound(f"no open position in {instrument}", broker=self.name)
        body = {"longUnits": "ALL"} if held.quantity > 0 else {"shortUnits": "ALL"}
        status, data = await self.http.send(
            "PUT",
            f"{self._account_path}/positions/{urlquote(instrument, safe='')}/close",
            what=what,
            body=body,
        )
        if status >= 300:
            raise self._order_error(status, data, what)
        return data

    async def positions(self) -> list[Position]:
        # One after the other: a nursery would wrap a venue error in an
        # exception group, and callers expect a BrokerError.
        positions = await self._get(f"{self._account_path}/openPositions", "open positions")
        trades = await self._get(f"{self._account_path}/openTrades", "open trades")
        return self._parse(
            "open positions",
            wire.positions_from,
            positions.get("positions") or [],
            trades.get("trades") or [],
            self.name,
        )

    async def account(self) -> Account:
        data = await self._get(f"{self._account_path}/summary", "account summary")
        self._note_transaction(data.get("lastTransactionID"))
        return self._parse(
            "account summary", wire.account_from, data.get("account") or {}, self.name
        )

    async def instruments(self) -> list[Instrument]:
        data = await self._get(f"{self._account_path}/instruments", "instruments")
        found: dict[str, Instrument] = {}
        for raw in data.get("instruments") or []:
            try:
                instrument = wire.instrument_from(raw)
            except (KeyError, TypeError, ValueError, ModelError) as exc:
                log.warning("instrument skipped", broker=self.name, problem=str(exc))
                continue
            found[instrument.symbol] = instrument
        self._instruments = found
        return list(found.values())

    # -- market data and events ----------------------------------------------

    async def quote(self, instrument: str) -> Quote:
        await self._instrument(instrument)
        data = await self._get(
            f"{self._account_path}/pricing", f"price of {instrument}", {"instruments": instrument}
        )
        for raw in data.get("prices") or []:
            if raw.get("instrument") == instrument:
                quote = self.prices.price(raw)
                if quote is not None:
                    return quote
        raise TemporarilyUnavailable(f"no two-sided price of {instrument} now", broker=self.name)

    @asynccontextmanager
    async def stream_quotes(
        self, instruments: Sequence[str]
    ) -> AsyncIterator[AsyncIterator[Quote | Heartbeat]]:
        for symbol in instruments:
            await self._instrument(symbol)
        params = {"instruments": ",".join(instruments), "snapshot": "true"}
        path = f"{self._account_path}/pricing/stream"
        async with self.http.stream(path, what="pricing stream", params=params) as lines:
            yield self._quotes(lines)

    async def _quotes(self, lines: AsyncIterator[bytes]) -> AsyncIterator[Quote | Heartbeat]:
        parse = self.prices.line
        async for raw in lines:
            item = parse(raw)
            if item is not None:
                yield item

    @asynccontextmanager
    async def stream_events(self) -> AsyncIterator[AsyncIterator[BrokerEvent | Heartbeat]]:
        path = f"{self._account_path}/transactions/stream"
        async with self.http.stream(path, what="transactions stream") as lines:
            yield self._events(lines)

    async def _events(self, lines: AsyncIterator[bytes]) -> AsyncIterator[BrokerEvent | Heartbeat]:
        # The stream is open: what happened before it is fetched now, and
        # anything the stream repeats is skipped by id.
        if self.delivered is not None:
            for tx in await self._since(self.delivered):
                self.replayed += 1
                for event in await self._transaction(tx):
                    yield event
        async for raw in lines:
            try:
                tx = json.loads(raw)
            except ValueError:
                log.warning("transactions stream: a line that is not JSON", broker=self.name)
                continue
            if not isinstance(tx, dict):
                continue
            if tx.get("type") == "HEARTBEAT":
                newest = tx.get("lastTransactionID")
                if newest is not None and self.delivered is not None:
                    try:
                        behind = int(newest) > self.delivered
                    except (TypeError, ValueError):
                        behind = False
                    if behind:  # something went by unseen: catch up
                        for missed in await self._since(self.delivered):
                            for event in await self._transaction(missed):
                                yield event
                yield HEARTBEAT
                continue
            for event in await self._transaction(tx):
                yield event

    async def _since(self, after: int) -> list[dict[str, Any]]:
        data = await self._get(
            f"{self._account_path}/transactions/sinceid", "transactions since", {"id": str(after)}
        )
        return [t for t in data.get("transactions") or [] if isinstance(t, dict)]

    async def _transaction(self, tx: dict[str, Any]) -> list[BrokerEvent]:
        """The rick events of one v20 transaction (none for most kinds)."""
        try:
            number = int(tx.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return []
        if self.delivered is not None and number <= self.delivered:
            return []  # seen already (a replay overlapping the stream)
        self.delivered = number
        self._note_transaction(number)
        kind = str(tx.get("type"))
        try:
            if kind in wire.CREATE_TRANSACTIONS:
                order = wire.created_order(tx, self.name)
                if self.orders.get(str(tx["id"])) is None:  # the POST's answer may be ahead
                    self.orders.put(order)
                if order.request.time_in_force in wire.MARKET_TIME_IN_FORCE:
                    # FOK / IOC never rest: the fill or cancel of the same batch
                    # says how it ended ("accepted" first would make a cancel at
                    # once a cancellation instead of the rejection it is).
                    return []
                return [order]
            if kind in wire.REJECT_TRANSACTIONS:
                return [wire.rejected_order(tx, self.name)]
            if kind == "ORDER_FILL":
                return await self._fill_events(tx)
            if kind == "ORDER_CANCEL":
                return await self._cancel_events(tx)
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            log.warning(
                "transaction not understood; skipped",
                broker=self.name,
                transaction=number,
                type=kind,
                problem=f"{type(exc).__name__}: {exc}",
            )
        return []

    async def _order_of(self, order_id: str) -> Order | None:
        """The entry order with this v20 id: cached, else asked for; None for an
        order hanging on a trade."""
        cached = self.orders.get(order_id)
        if cached is not None:
            return cached
        try:
            data = await self._get(
                f"{self._account_path}/orders/{urlquote(order_id, safe='')}", f"order {order_id}"
            )
        except NotFound:
            return None
        raw = data.get("order") or {}
        v20_type = str(raw.get("type"))
        if v20_type not in wire.ENTRY_TYPES:
            return None
        # As it was before the transaction being delivered changed it.
        order = Order(
            request=wire.request_from(raw, v20_type, raw["id"]),
            broker=self.name,
            status=OrderStatus.ACCEPTED,
            venue_order_id=str(raw["id"]),
        )
        at = wire.created_at(raw)
        if at is not None:
            order = attrs.evolve(order, created_at=at, updated_at=at)
        return self.orders.put(order)

    async def _fill_events(self, tx: dict[str, Any]) -> list[BrokerEvent]:
        fill = wire.fill_from(tx, self.name, self.currency)
        order = await self._order_of(str(tx.get("orderID")))
        if order is None:
            return [fill]
        if order.filled_quantity + fill.quantity > order.request.quantity:
            return [fill, order]  # counted already: the POST's answer carried this fill
        done = self.orders.put(wire.filled_order(order, fill))
        return [fill, done]

    async def _cancel_events(self, tx: dict[str, Any]) -> list[BrokerEvent]:
        if tx.get("replacedByOrderID"):
            return []  # replaced: the client id lives on in the new order
        order = await self._order_of(str(tx.get("orderID")))
        if order is None:
            return []
        cancelled = wire.cancelled_order(order, tx)
        if order.filled_quantity == 0 and order.request.time_in_force in wire.MARKET_TIME_IN_FORCE:
            # A FOK / IOC order cancelled with nothing filled: refused, as
            # place_order reports it when the POST's answer carries the cancel.
            cancelled = attrs.evolve(
                cancelled,
                status=OrderStatus.REJECTED,
                reject_reason=_cancelled_at_once(str(tx.get("reason") or "")),
            )
        return [self.orders.put(cancelled)]


def _cancelled_at_once(reason: str) -> str:
    """The reject reason of an order v20 cancelled as it made it (``reason``: the
    ORDER_CANCEL's, e.g. MARKET_HALTED, INSUFFICIENT_MARGIN)."""
    return f"the venue cancelled the order at once: {reason or 'cancelled by the venue'}"
