"""Shared fixtures of rick-oanda's tests: the fake v20 server on loopback and
brokers connected to it through the real httpx code path."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from rick_core.components import ComponentSetup
from rick_oanda.broker import OandaBroker
from rick_oanda.fake import FakeV20

pytest_plugins = ["rick_core.testing.plugin"]

TOKEN = "fake-token-1c0ffee"
BAD_TOKEN = "fake-token-bad"
ACCOUNT = "101-004-1234567-001"


class Secrets:
    """Credentials as the vault hands them to a component."""

    def __init__(self, **values: str) -> None:
        self.values = values

    def get(self, name: str) -> str:
        if name not in self.values:
            raise KeyError(f"no credential {name!r}")
        return self.values[name]

    def names(self) -> Sequence[str]:
        return list(self.values)


@pytest.fixture
async def fake_v20(nursery: trio.Nursery) -> FakeV20:
    """A fake v20 server (heartbeats every 0.2 s, price ticks every 0.05 s while a
    pricing stream is open) serving on loopback in the test's nursery."""
    fake = FakeV20(token=TOKEN, account_id=ACCOUNT, heartbeat=0.2, price_interval=0.05)
    await nursery.start(fake.serve)
    return fake


MakeBroker = Callable[..., OandaBroker]


@pytest.fixture
def make_broker(fake_v20: FakeV20, tmp_path: Path) -> MakeBroker:
    """``make_broker(token=TOKEN, **options)``: a new, unconnected broker on the fake."""

    def make(token: str | None = TOKEN, name: str = "oanda", **options: Any) -> OandaBroker:
        settings: dict[str, Any] = {
            "account_id": ACCOUNT,
            "rest_url": fake_v20.url,
            "stream_url": fake_v20.url,
            "timeout": 5,
            "quote_silence": 1.0,
            "event_silence": 1.0,
        }
        settings.update(options)
        credentials: Mapping[str, str] = {} if token is None else {"token": token}
        return OandaBroker(
            ComponentSetup(
                name=name,
                options=settings,
                credentials=Secrets(**credentials),
                home=tmp_path,
                source=f"test [brokers.{name}]",
            )
        )

    return make
