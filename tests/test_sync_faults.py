"""Sync under faults (issue 9, items 15-19): a cancelled slice's queued write, a stalled listing
page, a full disk under the state file, a dead endpoint, Retry-After. The engine runs for real
over HTTP against the GCS stand-in; time comes from injected clocks and sleeps, never measured."""

from __future__ import annotations

import os

import pytest

from gcpdl.clients import ClientFactory
from gcpdl.settings import resolve
from gcpdl.sync.engine import SyncOptions, run_sync
from gcpdl.sync.url import parse_gs_url

from tests.helpers import tree


def opts(dest, url="gs://dset/d", **kw) -> SyncOptions:
    kw.setdefault("retry_base", 0.005)
    return SyncOptions(source=parse_gs_url(url), dest=dest, **kw)


def sync(o: SyncOptions, **kw):
    return run_sync(o, ClientFactory(resolve()), **kw)


# --- 15: a cancelled slice's write never lands in another file ----------------------------------
def test_a_replaced_large_object_never_writes_into_another_file(gcs, tmp_path):
    """One slice of the large object 404s (overwritten mid-download), the others are cancelled
    while their writes wait on I/O threads behind a slow disk; the descriptor number they hold
    must not be reused by another object's part file before those writes are done."""
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/m03x", os.urandom(8 << 20))
    gcs.put_many("dset", {f"d/m{i:02d}": os.urandom((1 << 20) + 1 + i) for i in range(16)})  # streamed in pieces
    gcs.faults(replace_match="d/m03x", replace_after=2)
    dest = tmp_path / "o"
    s = sync(opts(dest, jobs=2, slice_size=1 << 20, write_delay=0.02))
    assert gcs.counters().get("replaced") == 1
    assert s.gone == 1 and not s.complete
    for rel, data in tree(dest).items():
        assert data == gcs.object_bytes("dset", "d/" + rel), rel
    assert os.listdir(dest / ".gcpdl" / "parts") == []


# --- 16: retry budgets outlast one attempt ------------------------------------------------------
def test_every_retry_budget_outlasts_the_attempt_it_retries():
    """A budget shorter than one attempt's timeout means a timed-out attempt is never retried."""
    from gcpdl import autostop
    from gcpdl.cli import cost
    from gcpdl.compute import adapter, doctor, lifecycle
    from gcpdl.sync import listing, transfer
    from gcpdl.sync.listing import backoff_total

    attempt = sum(listing.PAGE_TIMEOUT)
    assert listing.list_retry_budget() >= 2 * attempt + backoff_total(1, base=listing.LIST_BACKOFF_BASE)
    # the data path counts attempts (each with its own REQUEST_TIMEOUT), not a shared budget
    assert transfer.MAX_ATTEMPTS >= 2
    # Compute reads: each attempt is cut to min(READ_TIMEOUT, the deadline's remaining time)
    budgets = (lifecycle.PREFLIGHT_TIMEOUT, lifecycle.STOP_TIMEOUT, doctor.DOCTOR_TIMEOUT, autostop.TIMEOUT, cost.TIMEOUT)
    for budget in budgets:
        assert budget >= 2 * adapter.READ_TIMEOUT


def test_a_listing_page_that_stalls_past_the_read_timeout_is_fetched_again(gcs, tmp_path, monkeypatch):
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_TIMEOUT", (2.0, 1.0))  # the budget follows (list_retry_budget)
    monkeypatch.setattr(listing, "LIST_BACKOFF_BASE", 0.01)
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"a", "d/b": b"b"})
    gcs.faults(stall=10.0, stall_count=1, stall_kinds=["list"])
    s = sync(opts(tmp_path / "o"))
    assert gcs.counters()["stalls"] == 1
    assert (s.files, s.complete) == (2, True)


# --- 18: a dead endpoint stops the sync, not each object in turn --------------------------------
def test_an_endpoint_that_refuses_every_connection_stops_the_sync_once(gcs, tmp_path):
    """Listing works, every media connection is refused: one error after breaker_s without a
    single answer (a clock that advances a second per look, so no time is measured), not six
    attempts per object for every object left; a later run resumes and completes."""
    import itertools

    from gcpdl.errors import SyncError
    from tests.fixtures.ports import free_port

    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=300, size=100, seed=2)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    class DeadData(ClientFactory):
        storage_endpoint = dead

        @property
        def storage_list_endpoint(self):  # listing still goes to the stand-in
            return ClientFactory(resolve()).storage_endpoint

    ticks = itertools.count()
    dest = tmp_path / "o"
    o = opts(dest, jobs=4, breaker_s=10.0, clock=lambda: float(next(ticks)))
    with pytest.raises(SyncError) as e:
        run_sync(o, DeadData(resolve()))
    assert e.value.message.startswith(f"Cannot reach the storage endpoint {dead}: no answer for 10s (ConnectionRefusedError")
    assert e.value.fix == "Check the network (and GCPDL_STORAGE_ENDPOINT if set), then re-run: finished files are kept."
    assert next(ticks) < 6 * 300  # stopped long before every object had its six attempts
    assert os.listdir(dest / ".gcpdl" / "parts") == [] if dest.exists() else True

    s = sync(opts(dest))
    assert (s.files, s.complete) == (300, True)


# --- 19: Retry-After is honoured ----------------------------------------------------------------
@pytest.mark.parametrize(
    "header, waited",
    [
        ("7", 7.0),
        ("Sat, 05 Dec 2026 10:00:05 GMT", 5.0),  # an HTTP-date, against the injected wall clock
        ("3600", 60.0),  # capped at RETRY_AFTER_MAX
    ],
)
def test_retry_after_on_429_and_503_is_waited_for(gcs, tmp_path, header, waited):
    from datetime import datetime, timezone

    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    gcs.faults(fail_status=503, fail_count=1, fail_kinds=["media"], retry_after=header)
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:  # records the pause instead of taking it
        pauses.append(seconds)

    now = datetime(2026, 12, 5, 10, 0, 0, tzinfo=timezone.utc).timestamp()
    s = sync(opts(tmp_path / "o", sleep=sleep, wall_clock=lambda: now))
    assert (s.files, s.retries) == (1, 1)
    assert pauses == [waited]


def test_a_429_without_retry_after_backs_off_as_before(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    gcs.faults(fail_status=429, fail_count=1, fail_kinds=["media"])  # the stand-in's "Retry-After: 0"
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    s = sync(opts(tmp_path / "o", sleep=sleep, retry_base=0.25))
    assert s.files == 1 and len(pauses) == 1 and 0 <= pauses[0] <= 0.25
