"""``rick pnl``: realized P&L, fees and volume per broker and instrument, and equity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from rick_core.commands._common import config_option
from rick_core.commands.orders import open_store_for_reading

if TYPE_CHECKING:
    from pathlib import Path

    from rick_core.reports import BrokerPnl


@click.command()
@config_option
@click.option("--broker", help="Only this broker (its name in rick.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object keyed by broker.")
def pnl(config_path: Path | None, broker: str | None, as_json: bool) -> None:
    """Show realized P&L, fees, volume and fill count per broker and instrument,
    and each broker's equity with its change since rick first saw the account.

    P&L is derived from the stored fills by the average-cost method, in each
    instrument's quote currency; fees are not deducted from it (they may be in
    another currency). Equity comes from the latest stored account snapshot.
    """
    store = open_store_for_reading(config_path, as_json=as_json, empty="{}")
    if store is None:
        return
    from rick_core.reports import pnl_summary

    with store:
        accounts = [a for a in store.accounts() if broker is None or a.account.broker == broker]
        summary = pnl_summary(store.fills(broker=broker), accounts)
    if as_json:
        import json

        click.echo(json.dumps({b.broker: _jsonable(b) for b in summary}, indent=2))
        return
    if not summary:
        click.echo("no fills and no account snapshots" + (f" for {broker}" if broker else " yet"))
        return
    for i, broker_pnl in enumerate(summary):
        if i:
            click.echo("")
        for line in _lines(broker_pnl):
            click.echo(line)


def _jsonable(broker_pnl: BrokerPnl) -> dict[str, Any]:
    from rick_core.model import to_jsonable

    account: dict[str, Any] | None = None
    snapshot = broker_pnl.account
    if snapshot is not None:
        account = {
            **to_jsonable(snapshot.account),
            "first_equity": str(snapshot.first_equity),
            "first_time": snapshot.first_time.isoformat(),
            "equity_change": str(snapshot.equity_change),
        }
    return {
        "account": account,
        "realized_pnl": {c: str(a) for c, a in broker_pnl.realized_pnl.items()},
        "fees": {c: str(a) for c, a in broker_pnl.fees.items()},
        "instruments": [
            {
                "instrument": p.instrument,
                "quote_currency": p.quote_currency,
                "realized_pnl": str(p.realized_pnl),
                "fees": {c: str(a) for c, a in p.fees.items()},
                "volume": str(p.volume),
                "fills": p.fills,
                "position": str(p.quantity),
            }
            for p in broker_pnl.positions
        ],
    }


def _lines(broker_pnl: BrokerPnl) -> list[str]:
    from rick_core.reports import format_amounts, format_money, format_table, format_time

    snapshot = broker_pnl.account
    if snapshot is None:
        lines = [f"{broker_pnl.broker}: no account snapshot yet"]
    else:
        account = snapshot.account
        lines = [
            f"{broker_pnl.broker}: equity {format_money(account.equity, account.currency)} "
            f"({snapshot.equity_change:+} since {format_time(snapshot.first_time)} UTC), "
            f"balance {account.balance}, as of {format_time(account.time)} UTC"
        ]
    if not broker_pnl.positions:
        return [*lines, "  no fills"]
    rows = (
        (
            p.instrument,
            format_money(p.realized_pnl, p.quote_currency),
            format_amounts(p.fees),
            format_money(p.volume, p.quote_currency),
            str(p.fills),
            str(p.quantity),
        )
        for p in broker_pnl.positions
    )
    table = format_table(("instrument", "realized", "fees", "volume", "fills", "position"), rows)
    lines += [f"  {line}" for line in table]
    lines.append(
        f"  total realized: {format_amounts(broker_pnl.realized_pnl)}; "
        f"fees: {format_amounts(broker_pnl.fees)}"
    )
    return lines
