"""The data path's own listing (gcpdl/sync/rawlist.py): raw HTTP/JSON objects.list against the GCS
stand-in and gcp-storage-emulator, and what it buys: downloads start with the first page, and
nothing on the way to the first request imports google-cloud-storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gcpdl.errors import InvalidInput, NotFound, PermissionDenied

from tests.helpers import tree
from tests.test_sync import _assert_error, run_sync, sync_json


def _lister(url: str, bucket: str, prefix: str = "", user_project: str | None = None, identity: str = "anonymous"):
    from gcpdl.sync.rawlist import RawLister

    return RawLister(url, bucket, prefix, None, user_project, identity, sleep=lambda s: None)


def _names(pages) -> list[str]:
    return [r.name for page in pages for r in page]


# --- the GCS stand-in -------------------------------------------------------------------------
def test_pages_follow_the_token_and_keep_to_the_prefix(gcs, monkeypatch):
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_SIZE", 3)
    gcs.create_bucket("dset", public=True)
    names = gcs.generate("dset", "d/", count=10, size=7, seed=1)
    gcs.put_many("dset", {"d-after": b"x", "c/before": b"y", "e/x": b"z"})
    pages = list(_lister(gcs.url, "dset", "d/").pages())
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert _names(pages) == sorted(names)
    rec = pages[0][0]
    assert (rec.size, rec.generation > 0, rec.crc32c is not None, rec.md5) == (7, True, True, gcs.object_meta("dset", rec.name)["md5Hash"])
    assert gcs.counters()["kind:list"] == 4


def test_a_page_with_no_items_is_not_the_end(gcs, monkeypatch):
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_SIZE", 4)
    gcs.create_bucket("dset", public=True)
    names = gcs.generate("dset", "d/", count=10, size=7, seed=1)
    gcs.faults(empty_pages=2)
    pages = list(_lister(gcs.url, "dset", "d/").pages())
    assert [len(p) for p in pages] == [4, 0, 0, 4, 2]
    assert _names(pages) == sorted(names)


def test_a_prefix_with_nothing_under_it_is_one_empty_page(gcs):
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    assert list(_lister(gcs.url, "dset", "nothing/").pages()) == [[]]


def test_listing_errors_are_one_line_errors(gcs):
    gcs.create_bucket("private")
    gcs.create_bucket("rpay", public=True, requester_pays=True)
    with pytest.raises(NotFound) as e:
        list(_lister(gcs.url, "nope").pages())
    assert e.value.message == "Bucket gs://nope does not exist (or is not visible to anonymous)."
    with pytest.raises(PermissionDenied) as e:
        list(_lister(gcs.url, "private").pages())
    assert e.value.message == "Anonymous access to gs://private is denied; it is not a public bucket."
    with pytest.raises(InvalidInput) as e:
        list(_lister(gcs.url, "rpay").pages())
    assert e.value.message == "gs://rpay is a requester-pays bucket."
    assert list(_lister(gcs.url, "rpay", user_project="payer").pages()) == [[]]


def test_a_denied_listing_through_the_cli_is_one_line(gcs, tmp_path):
    gcs.create_bucket("private")
    r = run_sync("gs://private/d", str(tmp_path / "o"), "--anonymous")
    _assert_error(
        r, 1,
        "Error: Anonymous access to gs://private is denied; it is not a public bucket. Run: gcloud auth application-default login",
        tmp_path / "o",
    )


def test_server_errors_are_retried_then_reported(gcs, monkeypatch):
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_TIMEOUT", (0.05, 0.05))  # the retry budget follows
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    gcs.faults(fail_status=503, fail_count=1, fail_kinds=["list"])
    assert _names(_lister(gcs.url, "dset", "d/").pages()) == ["d/a"]
    gcs.faults(fail_status=500, fail_count=1000, fail_kinds=["list"])
    from gcpdl.errors import SyncError

    with pytest.raises(SyncError) as e:
        list(_lister(gcs.url, "dset", "d/").pages())
    assert e.value.message.startswith("Listing gs://dset failed (500): ")
    assert "\n" not in e.value.message


def test_pages_requested_ahead_survive_failures_on_the_way(gcs, monkeypatch):
    """Each next page is requested before the last one is parsed: a 503 or a reset connection
    for a request sent ahead is retried like any other."""
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_SIZE", 2)
    gcs.create_bucket("dset", public=True)
    names = gcs.generate("dset", "d/", count=15, size=7, seed=1)
    gcs.faults(fail_status=503, fail_fraction=0.4, fail_kinds=["list"], seed=3)
    lister = _lister(gcs.url, "dset", "d/")
    assert _names(lister.pages()) == sorted(names)
    c = gcs.counters()
    assert c["faults:503"] >= 2 and c["kind:list"] == 8 + c["faults:503"]


# --- what it buys ------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_downloads_start_with_the_first_listing_page(gcs, tmp_path, monkeypatch):
    """The stand-in holds every page after the first until a media response went out (at most
    60 s): a sync that lists the whole prefix before its first GET waits the hold out."""
    import gcpdl.sync.listing as listing

    monkeypatch.setattr(listing, "PAGE_SIZE", 5)
    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=20, size=100, seed=4)
    gcs.faults(hold_pages=60.0)
    s = sync_json("gs://dset/d", str(tmp_path / "o"))
    assert s["files"] == 20
    c = gcs.counters()
    assert (c.get("holds_released", 0), c.get("holds_expired", 0)) == (3, 0)


def test_nothing_on_the_data_path_imports_google_cloud_storage(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=10, size=100, seed=5)
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from gcpdl.cli.app import cli\n"
        f"r = CliRunner().invoke(cli, ['sync', 'gs://dset/d', {str(tmp_path / 'o')!r}, '--local', '--json'])\n"
        "print(json.dumps({'rc': r.exit_code, 'files': json.loads(r.stdout)['files'] if r.exit_code == 0 else r.stderr,"
        " 'gcs': sorted(m for m in sys.modules if m.startswith('google.cloud.storage'))}))\n"
    )
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs.url)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "files": 10, "gcs": []}


# --- gcp-storage-emulator (written elsewhere) ---------------------------------------------------
def test_raw_listing_against_gcp_storage_emulator(gcs_emu, tmp_path):
    gcs_emu.create_bucket("emul")
    data = {f"set/{i:02d}": bytes([i]) * (i + 1) for i in range(12)}
    gcs_emu.put_many("emul", {**data, "other/x": b"x", "set-not/y": b"y"})
    pages = list(_lister(gcs_emu.url, "emul", "set/").pages())
    assert _names(pages) == sorted(data)
    assert {r.name: r.size for p in pages for r in p} == {k: len(v) for k, v in data.items()}
    assert all(r.crc32c is not None for p in pages for r in p)
    assert list(_lister(gcs_emu.url, "emul", "nothing/").pages()) == [[]]
    with pytest.raises(NotFound) as e:
        list(_lister(gcs_emu.url, "no-such-bucket").pages())
    assert e.value.message == "Bucket gs://no-such-bucket does not exist (or is not visible to anonymous)."
    s = sync_json("gs://emul/set", str(tmp_path / "o"))
    assert s["files"] == 12
    assert tree(tmp_path / "o") == {k[len("set/"):]: v for k, v in data.items()}
