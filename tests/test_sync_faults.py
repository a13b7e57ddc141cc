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
