"""``rick quotes``: live quotes from a running rick, through its WebSocket proxy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from rick_core.commands._common import config_option, load_config_or_exit

KEY_VARIABLE = "RICK_API_KEY"

# What each close code of the proxy means to someone at a terminal (see
# docs/websocket-protocol.md).
_CLOSE_HINTS = {
    1001: "rick is shutting down",
    1011: "the proxy failed; rick's log says why",
    4001: "the API key was refused",
    4002: "the proxy got no auth message in time",
    4003: "the proxy expected an auth message first",
    4008: "this terminal read too slowly",
    4009: "too many order events were left unread",
    4029: "this API key has too many connections open",
}


def _instruments(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(v.strip().upper() for v in value))


def _read_key(key_file: Path | None) -> str:
    if key_file is not None:
        try:
            key = key_file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read the API key from {key_file}: {exc}") from None
        if not key:
            raise click.ClickException(f"{key_file} is empty: put the API key in it")
        return key
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise click.ClickException(
            f"no API key: set {KEY_VARIABLE} or pass --key-file FILE. Create a key with "
            "`rick apikey create NAME --scope read` (it is printed once), then "
            f"`export {KEY_VARIABLE}=rk_...`"
        )
    return key


def _default_url(config_path: Path | None) -> str:
    config = load_config_or_exit(config_path)
    host, port = config.proxy.host, config.proxy.port
    if port == 0:
        raise click.ClickException(
            "the config has [proxy] port = 0 (any free port): pass --url ws://HOST:PORT with "
            'the port `rick run` logged ("proxy listening")'
        )
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    if not config.proxy.enabled:
        click.echo(
            "note: [proxy] enabled = false in the config: rick serves no quotes to connect to",
            err=True,
        )
    return f"ws://{host}:{port}"


@click.command()
@config_option
@click.argument("instruments", nargs=-1, required=True, callback=_instruments)
@click.option(
    "--broker",
    default="best",
    show_default=True,
    help='A broker name from rick.toml, or "best": the best bid and ask across brokers.',
)
@click.option(
    "--url",
    default=None,
    help="The proxy's address (default: ws://HOST:PORT from the config's [proxy]).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"A file holding the API key (default: ${KEY_VARIABLE}).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after N quotes (default: run until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each quote message as a JSON line.")
def quotes(
    config_path: Path | None,
    instruments: list[str],
    broker: str,
    url: str | None,
    key_file: Path | None,
    count: int | None,
    as_json: bool,
) -> None:
    """Show live quotes of INSTRUMENTS (EUR_USD, BTC_USD, AAPL) from a running rick.

    Connects to the WebSocket proxy of `rick run`, authenticates with an API
    key (scope read is enough) from --key-file or $RICK_API_KEY, and prints one
    line per quote: time (UTC), broker, instrument, bid, ask and spread; for
    --broker best also the brokers quoting the best bid and ask.
    """
    key = _read_key(key_file)
    target = url or _default_url(config_path)
    import trio

    try:
        trio.run(_watch, target, key, instruments, broker, count, as_json)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


async def _watch(
    url: str, key: str, instruments: list[str], broker: str, count: int | None, as_json: bool
) -> None:
    import json

    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

    try:
        async with open_websocket_url(url) as ws:
            try:
                await ws.send_message(json.dumps({"action": "auth", "key": key}))
                await _expect(ws, "auth")
                await ws.send_message(
                    json.dumps(
                        {"action": "subscribe", "broker": broker, "instruments": instruments}
                    )
                )
                shown = 0
                while count is None or shown < count:
                    message = json.loads(await ws.get_message())
                    kind = message.get("type")
                    if kind == "quote":
                        click.echo(json.dumps(message) if as_json else _quote_line(message))
                        shown += 1
                    elif kind == "error":
                        raise click.ClickException(f"the proxy refused: {message.get('message')}")
                    elif kind == "subscribed" and not message.get("confirmed", True):
                        click.echo(
                            f"note: {broker}'s quote stream is not open yet; quotes follow once "
                            "it is",
                            err=True,
                        )
            except ConnectionClosed as closed:
                raise click.ClickException(_closed_text(url, closed)) from None
    except HandshakeError as exc:
        cause = exc.__cause__
        if _refused(cause):
            raise click.ClickException(
                f"cannot connect to {url}: connection refused. Is rick running (`rick run`), "
                "with its proxy enabled ([proxy] enabled = true) on that host and port?"
            ) from None
        raise click.ClickException(f"cannot connect to {url}: {cause or exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot connect to {url}: {exc}") from None
    except ValueError as exc:  # a malformed URL, or a message that is not JSON
        raise click.ClickException(f"{url}: {exc}") from None


def _refused(error: BaseException | None) -> bool:
    """Whether ``error``, its causes or (trio's) grouped attempts include a refusal."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, ConnectionRefusedError):
            return True
        if isinstance(error, BaseExceptionGroup):
            return any(_refused(e) for e in error.exceptions)
        error = error.__cause__
        seen += 1
    return False


async def _expect(ws: Any, kind: str) -> dict[str, Any]:
    import json

    message: dict[str, Any] = json.loads(await ws.get_message())
    if message.get("type") == "error":
        raise click.ClickException(f"the proxy refused: {message.get('message')}")
    if message.get("type") != kind:
        raise click.ClickException(f"unexpected reply from the proxy: {message}")
    return message


def _closed_text(url: str, closed: Any) -> str:
    reason = closed.reason
    if reason is None:
        return f"the proxy at {url} closed the connection"
    code = reason.code
    hint = _CLOSE_HINTS.get(code, reason.name)
    said = f": {reason.reason}" if reason.reason else ""
    return f"the proxy at {url} closed the connection ({code}, {hint}){said}"


def _quote_line(message: dict[str, Any]) -> str:
    from decimal import Decimal, InvalidOperation

    bid, ask = str(message.get("bid")), str(message.get("ask"))
    try:
        spread = str(Decimal(ask) - Decimal(bid))
    except InvalidOperation:
        spread = "?"
    line = (
        f"{message.get('time')}  {message.get('broker')}  {message.get('instrument')}  "
        f"bid {bid}  ask {ask}  spread {spread}"
    )
    if message.get("broker") == "best":
        line += f"  (bid {message.get('bid_broker')}, ask {message.get('ask_broker')})"
    skipped = message.get("skipped")
    if skipped:
        line += f"  [{skipped} skipped]"
    return line
