"""``rick fills``: the executions in the store, newest last."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rick_core.commands._common import config_option
from rick_core.commands.orders import filter_options, limit_option, open_store_for_reading

if TYPE_CHECKING:
    from pathlib import Path


@click.command()
@config_option
@filter_options
@limit_option("fills")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of fills.")
def fills(
    config_path: Path | None,
    broker: str | None,
    strategy: str | None,
    instrument: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List stored fills, newest last, each with the strategy of its order. Times are UTC.

    A fill without a strategy belongs to an order rick did not place.
    """
    store = open_store_for_reading(config_path, as_json=as_json, empty="[]")
    if store is None:
        return
    with store:
        found = store.fills_with_strategy(
            broker=broker, strategy=strategy, instrument=instrument, limit=limit or None
        )
    if as_json:
        import json

        from rick_core.model import to_jsonable

        click.echo(json.dumps([{**to_jsonable(f), "strategy": s} for f, s in found], indent=2))
        return
    if not found:
        filtered = broker or strategy or instrument
        click.echo("no fills match" if filtered else "no fills yet")
        return
    from rick_core.reports import format_money, format_table, format_time

    headers = [
        "time (UTC)",
        "fill",
        "order",
        "strategy",
        "broker",
        "instrument",
        "side",
        "qty",
        "price",
        "fee",
    ]
    rows = (
        (
            format_time(f.time),
            f.fill_id,
            f.client_order_id,
            s or "-",
            f.broker,
            f.instrument,
            f.side.value,
            str(f.quantity),
            str(f.price),
            format_money(f.fee, f.fee_currency),
        )
        for f, s in found
    )
    for line in format_table(headers, rows):
        click.echo(line)
    if limit and len(found) == limit:
        click.echo(f"(the last {limit}; --limit 0 shows all)")
