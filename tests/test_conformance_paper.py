"""The paper broker passes the broker conformance suite, and the suite can fail:
a broken paper broker run through it (with pytester) fails exactly the tests
of its defects."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from rick_core.components import ComponentSetup
from rick_core.paper.broker import PaperBroker
from rick_core.testing import BrokerConformance, BrokerTarget

# Allowed in a test module (not in a non-root conftest.py): pytest registers them
# when it collects this module.
pytest_plugins = ["pytester", "rick_core.testing.plugin"]

PAPER_OPTIONS = {
    "persist": False,
    "seed": 7,
    "speed": 0,  # quotes as fast as they are consumed: no waiting on the clock
    "instruments": ["EUR_USD", "GBP_USD"],
}


@pytest.fixture
def rick_broker_target(tmp_path: Path) -> BrokerTarget:
    def make_broker() -> PaperBroker:
        return PaperBroker(
            ComponentSetup(name="paper-conformance", options=PAPER_OPTIONS, home=tmp_path)
        )

    return BrokerTarget(
        make_broker=make_broker,
        instrument="EUR_USD",
        quantity=Decimal(1000),
        rejected_quantity=Decimal(1_000_000_000),  # far beyond the margin of 100000 USD
        timeout=5,
    )


class TestPaperBrokerConformance(BrokerConformance):
    pass


# ---------------------------------------------------------------------------
# the suite can fail

SUITE = sorted(name for name in vars(BrokerConformance) if name.startswith("test_"))

PAPER_SKIPS = {
    # the paper broker has no credentials
    "test_close_after_failed_connect",
    "test_unauthenticated_connect_raises_authentication_failed",
    # it supports every order type, time in force and attachment
    "test_unsupported_requests_raise_unsupported",
}

BROKEN_CONFTEST = """
pytest_plugins = ["rick_core.testing.plugin"]
"""

BROKEN_TESTS = """
from contextlib import asynccontextmanager
from decimal import Decimal

import attrs
import pytest
import trio

from rick_core.broker import NotFound
from rick_core.components import ComponentSetup
from rick_core.model import OrderStatus
from rick_core.paper.broker import PaperBroker
from rick_core.testing import BrokerConformance, BrokerTarget

SECRET = "s3cr3t-t0ken"


class BrokenBroker(PaperBroker):
    async def quote(self, instrument):
        if instrument == "EUR_USD":  # a quote of the wrong instrument
            return await super().quote("GBP_USD")
        if instrument == "ZZZ_QQQ":  # leaks a credential
            raise NotFound(f"GET /quotes/ZZZ_QQQ?token={SECRET} answered 404", broker=self.name)
        return await super().quote(instrument)

    async def cancel_order(self, order):
        try:
            return await super().cancel_order(order)
        except NotFound:  # pretends to cancel what it never had
            return attrs.evolve(order, status=OrderStatus.CANCELED)

    @asynccontextmanager
    async def stream_events(self):  # never delivers anything
        async def nothing():
            await trio.sleep_forever()
            yield

        yield nothing()


@pytest.fixture
def rick_broker_target(tmp_path):
    options = {"persist": False, "seed": 7, "speed": 0, "instruments": ["EUR_USD", "GBP_USD"]}
    return BrokerTarget(
        make_broker=lambda: BrokenBroker(
            ComponentSetup(name="broken", options=options, home=tmp_path)
        ),
        instrument="EUR_USD",
        quantity=Decimal(1000),
        rejected_quantity=Decimal(1_000_000_000),
        timeout=0.5,
        secrets=[SECRET],
    )


class TestBrokenBroker(BrokerConformance):
    pass
"""

BROKEN_FAILS = {
    "test_stream_quotes",  # quote() after the stream gives the wrong instrument
    "test_quote",  # wrong instrument
    "test_quote_of_unknown_instrument_raises_not_found",  # the credential in the message
    "test_cancel_unknown_order_raises_not_found",  # nothing raised
    "test_stream_events_delivers_fill_and_order",  # times out
    "test_fills_since_returns_the_fills_of_an_order",  # times out waiting for the stream
    "test_errors_are_broker_errors_without_credentials",  # credential; cancel raises nothing
}


def outcomes(reprec: pytest.HookRecorder) -> dict[str, set[str]]:
    passed, skipped, failed = reprec.listoutcomes()
    return {
        kind: {report.nodeid.rsplit("::", 1)[-1] for report in reports}
        for kind, reports in (("passed", passed), ("skipped", skipped), ("failed", failed))
    }


def test_the_expected_outcomes_name_real_tests() -> None:
    assert set(SUITE) > PAPER_SKIPS
    assert set(SUITE) > BROKEN_FAILS
    assert len(SUITE) >= 20


def test_broker_target_checks_its_fields(tmp_path: Path) -> None:
    def make() -> PaperBroker:
        return PaperBroker(ComponentSetup(name="p", options=PAPER_OPTIONS, home=tmp_path))

    target = BrokerTarget(make_broker=make, instrument="EUR_USD", quantity="0.5")
    assert target.quantity == Decimal("0.5")
    assert (target.unknown_instrument, target.timeout, target.secrets) == ("ZZZ_QQQ", 10.0, ())
    with pytest.raises(TypeError, match="expected a Decimal"):
        BrokerTarget(make_broker=make, instrument="EUR_USD", quantity=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="canonical"):
        BrokerTarget(make_broker=make, instrument="eur/usd", quantity=1)
    with pytest.raises(ValueError, match="positive"):
        BrokerTarget(make_broker=make, instrument="EUR_USD", quantity=0)
    with pytest.raises(ValueError, match="non-empty"):
        BrokerTarget(make_broker=make, instrument="EUR_USD", quantity=1, secrets=[""])
    with pytest.raises(TypeError, match="not one string"):
        BrokerTarget(make_broker=make, instrument="EUR_USD", quantity=1, secrets="token")
    with pytest.raises(ValueError, match="timeout"):
        BrokerTarget(make_broker=make, instrument="EUR_USD", quantity=1, timeout=0)


def test_a_broken_broker_fails_exactly_the_tests_of_its_defects(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makepyfile(test_broken=BROKEN_TESTS)
    reprec = pytester.inline_run("-p", "no:cacheprovider")
    got = outcomes(reprec)
    assert got["failed"] == BROKEN_FAILS
    assert got["skipped"] == PAPER_SKIPS
    assert got["passed"] == set(SUITE) - BROKEN_FAILS - PAPER_SKIPS
    # the failures say why
    reports = {r.nodeid.rsplit("::", 1)[-1]: r for r in reprec.listoutcomes()[2]}
    assert "asked for a quote of EUR_USD, got one of GBP_USD" in reports["test_quote"].longreprtext
    assert "contains secrets[0]" in (
        reports["test_quote_of_unknown_instrument_raises_not_found"].longreprtext
    )
    for report in reports.values():  # a leak is reported without the credential
        assert "s3cr3t-t0ken" not in report.longreprtext
    assert (
        "nothing was raised" in reports["test_cancel_unknown_order_raises_not_found"].longreprtext
    )
    assert "took longer than 0.5s" in (
        reports["test_stream_events_delivers_fill_and_order"].longreprtext
    )


def test_a_missing_target_fixture_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makepyfile(
        test_nothing="""
        from rick_core.testing import BrokerConformance

        class CheckMyBroker(BrokerConformance):  # collected whatever its name
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "test_quote")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*needs a rick_broker_target fixture*"])
    marked = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "rick_conformance")
    marked.assert_outcomes(errors=len(SUITE))


def test_the_target_may_depend_on_a_fake_venue_in_the_tests_nursery(
    pytester: pytest.Pytester,
) -> None:
    """The pattern docs/testing-plugins.md shows: a fake venue served on loopback
    port 0 from the test's nursery, reached by the broker through real sockets."""
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makepyfile(
        test_loopback="""
        from decimal import Decimal
        from functools import partial

        import pytest
        import trio

        from rick_core.components import ComponentSetup
        from rick_core.paper.broker import PaperBroker
        from rick_core.testing import BrokerConformance, BrokerTarget


        class FakeVenue:
            connections = 0

            async def handle(self, stream):
                self.connections += 1
                await stream.send_all(b"hello")
                await stream.aclose()

        class LoopbackBroker(PaperBroker):
            port = 0

            async def connect(self):
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                assert await stream.receive_some() == b"hello"
                await stream.aclose()
                await super().connect()

        @pytest.fixture
        async def fake_venue(nursery):
            venue = FakeVenue()
            serve = partial(trio.serve_tcp, venue.handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            venue.port = listeners[0].socket.getsockname()[1]
            return venue

        @pytest.fixture
        def rick_broker_target(fake_venue, tmp_path):
            def make_broker():
                broker = LoopbackBroker(ComponentSetup(
                    name="loopback", options={"persist": False, "speed": 0}, home=tmp_path
                ))
                broker.port = fake_venue.port
                return broker

            return BrokerTarget(make_broker=make_broker, instrument="EUR_USD", quantity=1000)

        class TestLoopback(BrokerConformance):
            async def test_the_fake_venue_was_reached(self, rick_broker_target, fake_venue):
                await self.test_connect_and_close(rick_broker_target)
                assert fake_venue.connections == 1
        """
    )
    reprec = pytester.inline_run("-p", "no:cacheprovider")
    got = outcomes(reprec)
    assert not got["failed"]
    assert "test_the_fake_venue_was_reached" in got["passed"]
    assert "test_market_buy_then_sell" in got["passed"]


# ---------------------------------------------------------------------------
# fills(since): the check catches a venue that ignores since, renumbers or reverses

BROKEN_FILLS_TESTS = """
from datetime import UTC, datetime
from decimal import Decimal

import attrs
import pytest

from rick_core.components import ComponentSetup
from rick_core.paper.broker import PaperBroker
from rick_core.testing import BrokerConformance, BrokerTarget

OPTIONS = {"persist": False, "seed": 7, "speed": 0, "instruments": ["EUR_USD"]}


class IgnoresSince(PaperBroker):
    async def fills(self, since):
        return await super().fills(datetime(2000, 1, 1, tzinfo=UTC))


class Renumbers(PaperBroker):
    async def fills(self, since):
        return [attrs.evolve(f, fill_id="x" + f.fill_id) for f in await super().fills(since)]


class NewestFirst(PaperBroker):
    async def fills(self, since):
        return list(reversed(await super().fills(since)))


def target(kind, tmp_path):
    return BrokerTarget(
        make_broker=lambda: kind(ComponentSetup(name="p", options=OPTIONS, home=tmp_path)),
        instrument="EUR_USD",
        quantity=Decimal(1000),
        timeout=1,
    )


class TestIgnoresSince(BrokerConformance):
    @pytest.fixture
    def rick_broker_target(self, tmp_path):
        return target(IgnoresSince, tmp_path)


class TestRenumbers(BrokerConformance):
    @pytest.fixture
    def rick_broker_target(self, tmp_path):
        return target(Renumbers, tmp_path)


class TestNewestFirst(BrokerConformance):
    @pytest.fixture
    def rick_broker_target(self, tmp_path):
        return target(NewestFirst, tmp_path)
"""


def test_the_fills_check_catches_a_venue_that_ignores_since_renumbers_or_reverses(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makepyfile(test_broken_fills=BROKEN_FILLS_TESTS)
    reprec = pytester.inline_run("-p", "no:cacheprovider", "-k", "fills")
    reports = {r.nodeid.split("::", 1)[1]: r for r in reprec.listoutcomes()[2]}
    fills_test = "test_fills_since_returns_the_fills_of_an_order"
    assert set(reports) == {
        f"TestIgnoresSince::{fills_test}",
        f"TestRenumbers::{fills_test}",
        f"TestNewestFirst::{fills_test}",
    }
    assert "before since" in reports[f"TestIgnoresSince::{fills_test}"].longreprtext
    assert "is not in fills()" in reports[f"TestRenumbers::{fills_test}"].longreprtext
    assert "must list oldest first" in reports[f"TestNewestFirst::{fills_test}"].longreprtext


# ---------------------------------------------------------------------------
# a narrowed paper broker: it claims less, refuses the rest, and passes the suite

NARROWED_TESTS = """
from decimal import Decimal

import pytest

from rick_core.components import ComponentSetup
from rick_core.paper.broker import PaperBroker
from rick_core.testing import BrokerConformance, BrokerTarget

OPTIONS = {
    "persist": False,
    "seed": 7,
    "speed": 0,
    "instruments": ["EUR_USD", "GBP_USD"],
    "order_types": ["market", "limit"],
    "time_in_force": ["gtc", "ioc"],
    "attached_protection": False,
    "position_protection": False,
    "fractional_quantity": False,
}


@pytest.fixture
def rick_broker_target(tmp_path):
    return BrokerTarget(
        make_broker=lambda: PaperBroker(
            ComponentSetup(name="narrow", options=OPTIONS, home=tmp_path)
        ),
        instrument="EUR_USD",
        quantity=Decimal(1000),
        rejected_quantity=Decimal(1_000_000_000),
        timeout=5,
    )


class TestNarrowedPaper(BrokerConformance):
    pass
"""


def test_a_narrowed_paper_broker_passes_the_suite_refusing_what_it_does_not_claim(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makepyfile(test_narrowed=NARROWED_TESTS)
    got = outcomes(pytester.inline_run("-p", "no:cacheprovider"))
    no_credentials = {
        "test_close_after_failed_connect",
        "test_unauthenticated_connect_raises_authentication_failed",
    }
    assert got["failed"] == set()
    assert got["skipped"] == no_credentials
    # the Unsupported test runs now: there is something the broker does not claim
    assert got["passed"] == set(SUITE) - no_credentials
