"""``rick orders``: the orders in the store, newest last."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from rick_core.commands._common import config_option, load_config_or_exit

if TYPE_CHECKING:
    from pathlib import Path

    from rick_core.model import Order
    from rick_core.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def open_store_for_reading(config_path: Path | None, *, as_json: bool, empty: str) -> Store | None:
    """The configured store, or None (after saying so) if there is none yet.

    Never creates the store. With ``as_json`` the message goes to stderr and
    ``empty`` (``[]`` or ``{}``) to stdout, so the output is still JSON. A store
    that cannot be opened (a newer schema, not a store) is a ClickException.
    """
    config = load_config_or_exit(config_path)
    from rick_core.store import Store, StoreError

    path = config.store_path
    try:
        store = Store.open_existing(path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if store is None:
        click.echo(f"no store at {path} yet: run `rick run` first", err=as_json)
        if as_json:
            click.echo(empty)
    return store


def _instrument(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else value.strip().upper()


def filter_options(f: F) -> F:
    """``--broker``, ``--strategy`` and ``--instrument``, shared by orders and fills."""
    f = click.option(
        "--instrument",
        callback=_instrument,
        help="Only this instrument, in canonical symbology (EUR_USD, AAPL).",
    )(f)
    f = click.option("--strategy", help="Only what this strategy placed.")(f)
    f = click.option("--broker", help="Only this broker (its name in rick.toml).")(f)
    return f


def limit_option(what: str) -> Callable[[F], F]:
    """``--limit N``: the last N rows, 50 by default, 0 for all."""
    return click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=50,
        show_default=True,
        help=f"Show the last N {what} (0: all of them).",
    )


@click.command()
@config_option
@filter_options
@click.option("--open", "open_only", is_flag=True, help="Only orders not in a final state.")
@limit_option("orders")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of orders.")
def orders(
    config_path: Path | None,
    broker: str | None,
    strategy: str | None,
    instrument: str | None,
    open_only: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List stored orders, newest last: what was asked, by which strategy, and what
    the venue did with it. Times are UTC.

    Orders without a strategy were not placed by rick (a venue's stop-loss
    close or margin close-out, an order placed by hand).
    """
    store = open_store_for_reading(config_path, as_json=as_json, empty="[]")
    if store is None:
        return
    with store:
        found = store.orders_with_strategy(
            broker=broker,
            strategy=strategy,
            instrument=instrument,
            open_only=open_only,
            limit=limit or None,
        )
    if as_json:
        import json

        from rick_core.model import to_jsonable

        click.echo(json.dumps([{**to_jsonable(o), "strategy": s} for o, s in found], indent=2))
        return
    if not found:
        filtered = broker or strategy or instrument or open_only
        click.echo("no orders match" if filtered else "no orders yet")
        return
    from rick_core.reports import format_table

    headers = "time (UTC),order,strategy,broker,instrument,side,qty,type,price,status,filled,reason"
    for line in format_table(headers.split(","), (_order_cells(o, s) for o, s in found)):
        click.echo(line)
    if limit and len(found) == limit:
        click.echo(f"(the last {limit}; --limit 0 shows all)")


def _order_cells(order: Order, strategy: str | None) -> tuple[str, ...]:
    from rick_core.reports import format_time

    request = order.request
    price = request.entry_price
    if order.average_fill_price is None:
        filled = str(order.filled_quantity)
    else:
        filled = f"{order.filled_quantity} @ {order.average_fill_price}"
    return (
        format_time(order.created_at),
        order.client_order_id,
        strategy or "-",
        order.broker,
        request.instrument,
        request.side.value,
        str(request.quantity),
        request.type.value,
        "-" if price is None else str(price),
        order.status.value,
        filled,
        order.reject_reason or "",
    )
