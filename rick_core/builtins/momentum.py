"""The example strategy: momentum entries, a trailing stop, and letting winners run.

For each instrument it keeps the last ``lookback`` mid prices. When the move
over that window is larger than ``threshold`` times the average spread, it
enters in that direction with a market order that carries a stop loss
``trail`` (a fraction of the price) away and a take profit ``target`` away.
While the position is open:

- the stop loss trails the best price seen, moved only when it gains at least
  a quarter of the trail (so the venue is not asked on every quote);
- when the price comes within half the distance of the take profit and the
  momentum still points the same way, it cancels the take profit and lets
  the trailing stop decide the exit ("let a winner run").

It trades at most one position per instrument and sizes each entry to
``notional`` in the instrument's quote currency. It is a demonstration of the
SDK, not advice.
"""

from __future__ import annotations

from collections import deque
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from attrs import frozen

from rick_core.broker import KEEP, BrokerError
from rick_core.model import Fill, Order, Position, Quote, Side
from rick_core.strategy import Strategy, StrategySetup

__all__ = ["Momentum"]


class Momentum(Strategy):
    """Momentum entries with a trailing stop; cancels the take profit while momentum holds."""

    @frozen
    class Params:
        notional: Decimal = Decimal(10000)
        """Size of an entry, in the instrument's quote currency."""
        lookback: int = 8
        """Quotes in the momentum window."""
        threshold: Decimal = Decimal(2)
        """Entry when the move over the window exceeds this many average spreads."""
        trail: Decimal = Decimal("0.001")
        """Stop distance as a fraction of the price."""
        target: Decimal = Decimal("0.002")
        """Take-profit distance as a fraction of the price."""
        cooldown: int = 8
        """Quotes to wait after an exit before entering again."""

    def __init__(self, setup: StrategySetup) -> None:
        super().__init__(setup)
        p = self.params
        if p.lookback < 2:
            raise ValueError(f"strategy {setup.name!r}: lookback must be at least 2")
        for name in ("notional", "threshold", "trail", "target"):
            if getattr(p, name) <= 0:
                raise ValueError(f"strategy {setup.name!r}: {name} must be positive")
        self._mids: dict[str, deque[Decimal]] = {}
        self._spreads: dict[str, deque[Decimal]] = {}
        self._best: dict[str, Decimal] = {}
        self._cooldown: dict[str, int] = {}
        self._busy: set[str] = set()
        self.entries = 0
        self.trails = 0
        self.runners = 0

    async def on_start(self) -> None:
        self.ctx.log.info(
            "momentum started",
            instruments=list(self.ctx.instruments),
            notional=str(self.params.notional),
        )

    async def on_quote(self, quote: Quote) -> None:
        symbol = quote.instrument
        mids = self._mids.setdefault(symbol, deque(maxlen=self.params.lookback))
        spreads = self._spreads.setdefault(symbol, deque(maxlen=self.params.lookback))
        mids.append(quote.mid)
        spreads.append(quote.spread)
        if symbol in self._busy:
            return
        if self._cooldown.get(symbol, 0) > 0:
            self._cooldown[symbol] -= 1
            return
        if self.ctx.open_orders(symbol):
            return  # an entry the venue has not filled (or not answered) yet: never a second
        position = self.ctx.position(symbol)
        if position is not None:
            await self._manage(position, quote)
            return
        self._best.pop(symbol, None)
        if len(mids) < mids.maxlen:  # type: ignore[operator]
            return
        direction = self._momentum(symbol)
        if direction is not None:
            await self._enter(quote, direction)

    def _momentum(self, symbol: str) -> Side | None:
        mids = self._mids[symbol]
        spreads = self._spreads[symbol]
        average_spread = sum(spreads, Decimal(0)) / len(spreads)
        move = mids[-1] - mids[0]
        if average_spread <= 0:
            return None
        strength = move / average_spread
        if strength > self.params.threshold:
            return Side.BUY
        if strength < -self.params.threshold:
            return Side.SELL
        return None

    async def _enter(self, quote: Quote, side: Side) -> None:
        symbol = quote.instrument
        instrument = self.ctx.instrument(symbol)
        price = quote.price_for(side)
        size_step = instrument.size_increment if instrument and instrument.size_increment else None
        quantity = self.params.notional / price
        quantity = (
            (quantity / size_step).to_integral_value(ROUND_DOWN) * size_step
            if size_step
            else quantity.quantize(Decimal(1), ROUND_DOWN)
        )
        if quantity <= 0 or (instrument and instrument.min_size and quantity < instrument.min_size):
            return
        sign = 1 if side is Side.BUY else -1
        stop = self._round(symbol, price * (1 - sign * self.params.trail))
        target = self._round(symbol, price * (1 + sign * self.params.target))
        self._busy.add(symbol)
        try:
            if side is Side.BUY:
                order = await self.ctx.buy(
                    symbol, quantity, stop_loss=stop, take_profit=target, tag="momentum"
                )
            else:
                order = await self.ctx.sell(
                    symbol, quantity, stop_loss=stop, take_profit=target, tag="momentum"
                )
        except BrokerError as exc:  # outcome unknown: wait, never pile orders on a sick venue
            self._cooldown[symbol] = self.params.cooldown * 4
            self.ctx.log.warning("entry failed", instrument=symbol, error=str(exc))
            return
        finally:
            self._busy.discard(symbol)
        if order.status.value == "rejected":
            return  # on_order has logged it and set the cooldown
        self.entries += 1
        self.ctx.log.info(
            "momentum entry",
            instrument=symbol,
            side=side.value,
            quantity=str(quantity),
            stop_loss=str(stop),
            take_profit=str(target),
            status=order.status.value,
        )

    async def _manage(self, position: Position, quote: Quote) -> None:
        symbol = quote.instrument
        long = position.quantity > 0
        mark = quote.bid if long else quote.ask
        best = self._best.get(symbol, position.average_price)
        best = max(best, mark) if long else min(best, mark)
        self._best[symbol] = best
        trail = best * self.params.trail
        stop_loss: Decimal | None = None
        current = position.stop_loss
        wanted = self._round(symbol, best - trail if long else best + trail)
        gain = (
            wanted - current
            if (long and current is not None)
            else (current - wanted if current is not None else trail)
        )
        on_safe_side = wanted < mark if long else wanted > mark
        if on_safe_side and gain >= trail / 4:
            stop_loss = wanted
        take_profit_off = False
        if position.take_profit is not None:
            distance = abs(position.take_profit - position.average_price)
            remaining = abs(position.take_profit - mark)
            still_going = self._momentum(symbol) is (Side.BUY if long else Side.SELL)
            take_profit_off = remaining <= distance / 2 and still_going
        if stop_loss is None and not take_profit_off:
            return
        self._busy.add(symbol)
        try:
            await self.ctx.set_protection(
                symbol,
                stop_loss=KEEP if stop_loss is None else stop_loss,
                take_profit=None if take_profit_off else KEEP,
            )
        except BrokerError as exc:  # the position closed meanwhile, or the venue is down
            self.ctx.log.info("protection not changed", instrument=symbol, reason=str(exc))
            self._cooldown[symbol] = self.params.cooldown
            return
        finally:
            self._busy.discard(symbol)
        if stop_loss is not None:
            self.trails += 1
        if take_profit_off:
            self.runners += 1
            self.ctx.log.info(
                "momentum holds: take profit cancelled, letting the winner run",
                instrument=symbol,
                stop_loss=str(stop_loss or current),
            )

    async def on_fill(self, fill: Fill) -> None:
        if self.ctx.position(fill.instrument) is None:
            self._cooldown[fill.instrument] = self.params.cooldown
            self._best.pop(fill.instrument, None)

    async def on_order(self, order: Order) -> None:
        if order.status.value == "rejected":
            self.ctx.log.warning(
                "order rejected", instrument=order.instrument, reason=order.reject_reason
            )
            self._cooldown[order.instrument] = self.params.cooldown

    def _round(self, symbol: str, price: Decimal) -> Decimal:
        instrument = self.ctx.instrument(symbol)
        step = instrument.price_increment if instrument and instrument.price_increment else None
        if step is None:
            return price.quantize(Decimal("0.00001"), ROUND_HALF_EVEN)
        return (price / step).to_integral_value(ROUND_HALF_EVEN) * step
