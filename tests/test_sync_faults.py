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
    from gcpdl.compute import adapter, doctor, lifecycle
    from gcpdl.sync import listing, transfer
    from gcpdl.sync.listing import backoff_total

    attempt = sum(listing.PAGE_TIMEOUT)
    assert listing.list_retry_budget() >= 2 * attempt + backoff_total(1, base=listing.LIST_BACKOFF_BASE)
    # the data path counts attempts (each with its own REQUEST_TIMEOUT), not a shared budget
    assert transfer.MAX_ATTEMPTS >= 2
    # Compute reads: each attempt is cut to min(READ_TIMEOUT, the deadline's remaining time)
    for budget in (lifecycle.PREFLIGHT_TIMEOUT, doctor.DOCTOR_TIMEOUT, lifecycle.STOP_TIMEOUT):
        assert budget >= 2 * adapter.READ_TIMEOUT


def test_a_listing_page_that_stalls_past_the_read_timeout_is_fetched_again(gcs, tmp_path, monkeypatch):
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_TIMEOUT", (2.0, 1.0))  # the budget follows (list_retry_budget)
    monkeypatch.setattr(listing, "LIST_BACKOFF_BASE", 0.01)
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"a", "d/b": b"b"})
    gcs.faults(stall=30.0, stall_count=1, stall_kinds=["list"])
    s = sync(opts(tmp_path / "o"))
    assert gcs.counters()["stalls"] == 1
    assert (s.files, s.complete) == (2, True)
