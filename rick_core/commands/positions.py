"""``rick positions``: net positions derived from the fills in the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rick_core.commands._common import config_option
from rick_core.commands.orders import open_store_for_reading

if TYPE_CHECKING:
    from pathlib import Path


@click.command()
@config_option
@click.option("--broker", help="Only this broker (its name in rick.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of positions.")
def positions(config_path: Path | None, broker: str | None, as_json: bool) -> None:
    """Show open net positions, derived from the stored fills.

    Average entry prices use the average-cost method; realized P&L is in the
    instrument's quote currency (blank for a single listing such as AAPL, whose
    currency the fills do not say). Flat positions are left out: `rick pnl`
    shows what they realized.
    """
    store = open_store_for_reading(config_path, as_json=as_json, empty="[]")
    if store is None:
        return
    from rick_core.reports import net_positions

    with store:
        held = [p for p in net_positions(store.fills(broker=broker)) if not p.is_flat]
    if as_json:
        import json

        from rick_core.model import to_jsonable

        click.echo(json.dumps([to_jsonable(p) for p in held], indent=2))
        return
    if not held:
        click.echo("no open positions")
        return
    from rick_core.reports import format_amounts, format_money, format_table, format_time

    headers = "broker,instrument,side,quantity,avg price,realized,fees,fills,last fill (UTC)"
    rows = (
        (
            p.broker,
            p.instrument,
            "long" if p.quantity > 0 else "short",
            str(p.quantity),
            str(p.average_price),
            format_money(p.realized_pnl, p.quote_currency),
            format_amounts(p.fees),
            str(p.fills),
            format_time(p.last_fill_time),
        )
        for p in held
    )
    for line in format_table(headers.split(","), rows):
        click.echo(line)
