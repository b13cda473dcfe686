"""The order state machine: which moves an order's status may make.

Every order state change the order manager hears of (the venue's answer to a
submit, its event stream, a lookup, rick's own cancel or modify under way) is
judged here before it is applied:

- ``APPLY``: an allowed move (or, in the same state, news: more fills, a new
  protection price, the venue's id); it is applied.
- ``SAME``: nothing new (a venue repeating itself); ignored quietly.
- ``STALE``: a message from a stage the order has already left (the submit's
  ``accepted`` answer arriving after the stream's ``filled``, a fill count
  lower than one already seen); ignored quietly, because venues deliver the
  same order's news on several channels in no guaranteed order.
- ``REFUSED``: a move the machine does not allow (a filled order said to be
  canceled, an order said to be filled twice over, a rejected order said to be
  working); never applied, and the order manager logs it.

The machine (``->`` lists where each state may go)::

    new              -> submitted, rejected
    submitted        -> unknown, accepted, partially_filled, filled, canceled,
                        rejected, expired
    unknown          -> accepted, partially_filled, filled, canceled, rejected,
                        expired
    accepted         -> partially_filled, filled, pending_modify, pending_cancel,
                        canceled, expired
    partially_filled -> filled, pending_modify, pending_cancel, canceled, expired
    pending_modify   -> accepted, partially_filled, filled, pending_cancel,
                        canceled, expired
    pending_cancel   -> partially_filled, filled, canceled, expired, and back to
                        accepted / partially_filled only by rick itself (a cancel
                        the venue refused)
    filled, canceled, rejected, expired: final

``new -> submitted`` is how every order leaves rick; a venue's answer to the
submit is judged from ``submitted``.
"""

from __future__ import annotations

import enum
from typing import Final

from rick_core.model import Order, OrderStatus

__all__ = ["ALLOWED", "Verdict", "allowed", "judge"]

S = OrderStatus

ALLOWED: Final[dict[OrderStatus, frozenset[OrderStatus]]] = {
    S.NEW: frozenset({S.SUBMITTED, S.REJECTED}),
    S.SUBMITTED: frozenset(
        {S.UNKNOWN, S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED}
    ),
    S.UNKNOWN: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED}
    ),
    S.ACCEPTED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_MODIFY, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.PARTIALLY_FILLED: frozenset(
        {S.FILLED, S.PENDING_MODIFY, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.PENDING_MODIFY: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    S.PENDING_CANCEL: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}
"""Every allowed move between two different states (see the module's docstring)."""

_LOCAL_ONLY: Final = {S.PENDING_CANCEL: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED})}
"""Moves only rick itself makes: back from a cancel the venue refused."""

_STAGE: Final = {
    S.NEW: 0,
    S.SUBMITTED: 1,
    S.UNKNOWN: 2,
    S.ACCEPTED: 3,
    S.PENDING_MODIFY: 3,
    S.PARTIALLY_FILLED: 4,
    S.PENDING_CANCEL: 5,
    S.FILLED: 9,
    S.CANCELED: 9,
    S.REJECTED: 9,
    S.EXPIRED: 9,
}
"""How far along its life a state is: a message from an earlier stage is stale."""


class Verdict(enum.Enum):
    APPLY = "apply"
    SAME = "same"
    STALE = "stale"
    REFUSED = "refused"


def allowed(current: OrderStatus, new: OrderStatus, *, local: bool = False) -> bool:
    """Whether the machine allows ``current -> new`` (``local``: a move rick itself makes)."""
    if new in ALLOWED[current]:
        return True
    return local and new in _LOCAL_ONLY.get(current, frozenset())


def judge(current: Order, update: Order, *, local: bool = False) -> Verdict:
    """What to do with ``update``, a new report of the order now at ``current``.

    ``local`` marks a state rick sets itself (a cancel or modify under way, or
    undone); the others come from venues.
    """
    if update.filled_quantity < current.filled_quantity:
        return Verdict.STALE  # fills only ever grow: this report is older
    more_fills = update.filled_quantity > current.filled_quantity
    old, new = current.status, update.status
    if old is new:
        if more_fills:
            return Verdict.REFUSED if old.is_final else Verdict.APPLY
        if old.is_final:
            return Verdict.SAME
        if update.updated_at < current.updated_at:
            return Verdict.STALE  # a late echo must not undo a newer protection change
        changed = (
            update.request.stop_loss != current.request.stop_loss
            or update.request.take_profit != current.request.take_profit
            or update.venue_order_id != current.venue_order_id
        )
        return Verdict.APPLY if changed else Verdict.SAME
    if old is S.PENDING_CANCEL and not local and not more_fills and not new.is_final:
        return Verdict.STALE  # the venue's echo from before the cancel was sent
    if allowed(old, new, local=local):
        return Verdict.APPLY
    if _STAGE[new] < _STAGE[old] and not more_fills:
        if old is S.REJECTED and _STAGE[new] >= _STAGE[S.ACCEPTED]:
            # A rejected order never worked: a working state is no late echo but
            # a contradiction (rick's own rejection after a send the venue took).
            return Verdict.REFUSED
        return Verdict.STALE
    return Verdict.REFUSED
