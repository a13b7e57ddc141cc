"""`gcpdl sync --local` end to end: the real CLI, engine, raw JSON-API listing (rawlist) and our
asyncio data path over real HTTP against the GCS stand-in (tests/fakes/gcs_server.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli

from tests.helpers import tree


def run_sync(*args: str):
    result = CliRunner().invoke(cli, ["sync", *args, "--local", "--retry-base", "0.005"])
    return result


def sync_json(*args: str) -> dict:
    result = run_sync(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def media(gcs) -> int:
    return gcs.counters().get("kind:media", 0)


def test_sync_copies_byte_identical_and_resync_costs_no_downloads(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    names = gcs.generate("dset", "train/", count=1500, size=3000, seed=3)
    gcs.put_many("dset", {"train/sub/deep/x.bin": b"deep", "train/empty": b"", "other/skip": b"no"})
    dest = tmp_path / "out"
    s = sync_json("gs://dset/train", str(dest))
    assert (s["files"], s["skipped"], s["failed"], s["listed"]) == (1502, 0, 0, 1502)
    assert s["bytes"] == 1500 * 3000 + 4
    for key in ("files", "bytes", "seconds", "files_per_s", "mb_per_s", "skipped", "failed"):
        assert key in s
    got = tree(dest)
    assert set(got) == {n[len("train/"):] for n in names} | {"sub/deep/x.bin", "empty"}
    for n in names[:: 97]:
        assert got[n[len("train/"):]] == gcs.object_bytes("dset", n)
    assert got["empty"] == b""
    assert os.listdir(dest / ".gcpdl" / "parts") == []

    before = media(gcs)
    s2 = sync_json("gs://dset/train", str(dest))
    assert (s2["files"], s2["skipped"], s2["failed"]) == (0, 1502, 0)
    assert media(gcs) == before  # a listing plus a stat: not one download


def test_changed_and_new_objects_only_are_fetched(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {f"d/{i}": bytes([i]) * 100 for i in range(20)})
    dest = tmp_path / "out"
    sync_json("gs://dset/d", str(dest))
    gcs.put("dset", "d/3", b"new content")
    gcs.put("dset", "d/new", b"brand new")
    before = media(gcs)
    s = sync_json("gs://dset/d", str(dest))
    assert (s["files"], s["skipped"]) == (2, 19)
    assert media(gcs) - before == 2
    assert (dest / "3").read_bytes() == b"new content" and (dest / "new").read_bytes() == b"brand new"


def test_local_edit_is_detected_and_repaired(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"a" * 50, "d/b": b"b" * 50})
    dest = tmp_path / "out"
    sync_json("gs://dset/d", str(dest))
    (dest / "a").write_bytes(b"x" * 50)  # same size, different bytes, newer mtime
    (dest / "b").unlink()
    s = sync_json("gs://dset/d", str(dest))
    assert s["files"] == 2
    assert tree(dest) == {"a": b"a" * 50, "b": b"b" * 50}


def test_lost_state_is_rebuilt_from_crc32c_without_downloading(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=50, size=2000, seed=1)
    dest = tmp_path / "out"
    sync_json("gs://dset/d", str(dest))
    (dest / ".gcpdl" / "state.sqlite").unlink()
    for extra in ("-wal", "-shm"):
        (dest / ".gcpdl" / f"state.sqlite{extra}").unlink(missing_ok=True)
    before = media(gcs)
    s = sync_json("gs://dset/d", str(dest))
    assert (s["files"], s["skipped"]) == (0, 50)
    assert media(gcs) == before


def test_large_object_in_parallel_slices_verified(gcs, tmp_path):
    gcs.create_bucket("big", public=True)
    (name,) = gcs.generate("big", "shards/", count=1, size=9 * 1024 * 1024 + 123, seed=5)
    dest = tmp_path / "out"
    s = sync_json("gs://big/shards", str(dest), "--slice-size", str(1 << 20))
    assert s["files"] == 1
    assert s["requests"] == 10  # 9 full MiB slices and one of 123 bytes
    assert (dest / name.split("/")[-1]).read_bytes() == gcs.object_bytes("big", name)


def test_retries_throttling_and_resets(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    names = gcs.generate("dset", "d/", count=40, size=5000, seed=2)
    gcs.faults(fail_status=503, fail_count=6, fail_kinds=["media"])
    dest = tmp_path / "out"
    s = sync_json("gs://dset/d", str(dest))
    assert (s["files"], s["failed"]) == (40, 0) and s["retries"] >= 6
    gcs.faults(fail_status=429, fail_count=3, fail_kinds=["media"], reset_mid_body=3)
    r = run_sync("gs://dset/d2", str(tmp_path / "out2"))  # matches nothing: an error, nothing fetched
    assert r.exit_code == 1 and not (tmp_path / "out2").exists()
    for p in dest.iterdir():
        if p.is_file():
            p.unlink()
    s = sync_json("gs://dset/d", str(dest))
    assert (s["files"], s["failed"]) == (40, 0) and s["retries"] >= 6
    assert gcs.counters()["resets"] == 3
    assert tree(dest)[names[7][2:]] == gcs.object_bytes("dset", names[7])


def test_corrupted_bytes_are_fetched_again(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"a" * 1000, "d/b": b"b" * 1000})
    gcs.faults(corrupt=1, corrupt_match="d/a")
    s = sync_json("gs://dset/d", str(tmp_path / "out"))
    assert (s["files"], s["failed"]) == (2, 0)
    assert (tmp_path / "out" / "a").read_bytes() == b"a" * 1000
    assert gcs.counters()["corrupted"] == 1


def test_persistent_corruption_fails_that_object_loudly(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/good": b"g" * 10, "d/bad": b"b" * 10})
    gcs.faults(corrupt=10, corrupt_match="d/bad")
    dest = tmp_path / "out"
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert r.exit_code == 3  # incomplete (tests/test_sync_trust.py)
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Sync incomplete: 1 of 2 objects is not in DEST (1 failed: d/bad (CRC32C mismatch twice: the"
        " downloaded bytes do not match the bucket's checksum)). Re-run to fetch 1 object."
    )
    summary = json.loads(r.stdout)
    assert summary["failed"] == 1 and summary["failures"][0]["name"] == "d/bad"
    assert tree(dest) == {"good": b"g" * 10}  # nothing half-written, no part file
    assert os.listdir(dest / ".gcpdl" / "parts") == []


def test_unsafe_names_placeholders_and_collisions(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many(
        "dset",
        {
            "d/ok": b"ok",
            "d/../../escape": b"evil",
            "d/a/../../../x": b"evil",
            "d//abs": b"evil",
            "d/folder/": b"",
            "d/f": b"file",
            "d/f/inside": b"collides",
            "d/.gcpdl/state.sqlite": b"evil",
        },
    )
    dest = tmp_path / "deep" / "out"
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert r.exit_code == 3, r.stderr  # incomplete: five objects are not in DEST
    s = json.loads(r.stdout)
    assert (s["unsafe"], s["placeholders"], s["collisions"], s["files"], s["complete"]) == (4, 1, 1, 2, False)
    assert "Warning: Skipping object 'd/../../escape': its name has a '..' path component." in r.stderr
    assert "Warning: Skipping 'd/f/inside': a file is in the way of its folder (file 'f')." in r.stderr
    assert tree(dest) == {"ok": b"ok", "f": b"file"}
    assert sorted(os.listdir(tmp_path)) == ["deep", "home"] and not (tmp_path / "escape").exists()
    assert not (tmp_path / "deep" / "escape").exists()


def test_delete_mirrors_inside_dest_only(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/keep": b"k", "d/sub/keep2": b"k2"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale").write_bytes(b"s")
    (dest / "olddir").mkdir()
    (dest / "olddir" / "stale2").write_bytes(b"s")
    (dest / "notes.txt").write_bytes(b"excluded, so protected")
    outside = tmp_path / "outside"
    outside.write_bytes(b"never touched")
    (dest / "link").symlink_to(outside)

    r = run_sync("gs://dset/d", str(dest), "--delete", "--dry-run", "--exclude", "*.txt")
    assert r.exit_code == 0, r.stderr
    assert "would delete stale" in r.stdout and "would delete olddir/stale2" in r.stdout
    assert (dest / "stale").exists() and not (dest / ".gcpdl").exists()

    s = sync_json("gs://dset/d", str(dest), "--delete", "--exclude", "*.txt")
    assert s["deleted"] == 3  # stale, olddir/stale2, link
    assert tree(dest) == {"keep": b"k", "sub/keep2": b"k2", "notes.txt": b"excluded, so protected"}
    assert not (dest / "olddir").exists()
    assert outside.read_bytes() == b"never touched"
    assert (dest / ".gcpdl" / "state.sqlite").exists()


def test_dry_run_changes_nothing(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"aa", "d/b": b"bbb"})
    dest = tmp_path / "out"
    r = run_sync("gs://dset/d", str(dest), "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["files"], s["bytes"], s["dry_run"]) == (2, 5, True)
    assert not dest.exists()
    assert media(gcs) == 0


def test_include_exclude(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a.jpg": b"1", "d/x/b.jpg": b"2", "d/c.txt": b"3", "d/tmp/d.jpg": b"4"})
    s = sync_json("gs://dset/d", str(tmp_path / "o"), "--include", "*.jpg", "--exclude", "tmp/*")
    assert (s["files"], s["filtered"]) == (2, 2)
    assert tree(tmp_path / "o") == {"a.jpg": b"1", "x/b.jpg": b"2"}


# --- errors a user can cause: one line, non-zero, nothing left behind ---------------------------
def _assert_error(r, code: int, line: str, dest: Path | None = None):
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [line] or r.stderr.strip().splitlines()[-1] == line, r.stderr
    assert "Traceback" not in r.stderr
    if dest is not None:
        assert not dest.exists()


def test_malformed_url(tmp_path):
    r = run_sync("http://x/y", str(tmp_path / "o"))
    _assert_error(r, 2, "Error: 'http://x/y' is not a Cloud Storage link. Use gs://BUCKET/PATH, https://storage.googleapis.com/BUCKET/PATH or a Cloud Console bucket link.", tmp_path / "o")


def test_bucket_not_found(gcs, tmp_path):
    r = run_sync("gs://nope-nope/x", str(tmp_path / "o"))
    _assert_error(r, 1, "Error: Bucket gs://nope-nope does not exist (or is not visible to anonymous).", tmp_path / "o")


def test_private_bucket_anonymously(gcs, tmp_path):
    gcs.create_bucket("private")
    gcs.put("private", "d/a", b"a")
    r = run_sync("gs://private/d", str(tmp_path / "o"))
    _assert_error(
        r, 1,
        "Error: Anonymous access to gs://private is denied; it is not a public bucket. Run: gcloud auth application-default login",
        tmp_path / "o",
    )


def test_requester_pays_needs_billing_project(gcs, tmp_path):
    gcs.create_bucket("rpay", public=True, requester_pays=True)
    gcs.put("rpay", "d/a", b"a")
    r = run_sync("gs://rpay/d", str(tmp_path / "o"))
    _assert_error(r, 2, "Error: gs://rpay is a requester-pays bucket. Pass --billing-project PROJECT_ID to pay for the reads.", tmp_path / "o")
    s = sync_json("gs://rpay/d", str(tmp_path / "o"), "--billing-project", "my-proj")
    assert s["files"] == 1


def test_not_enough_space_refuses_before_fetching(gcs, tmp_path):
    from gcpdl.clients import ClientFactory
    from gcpdl.errors import SyncError
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url

    gcs.create_bucket("huge", public=True)
    gcs.generate("huge", "d/", count=3, size=2_000_000, seed=1)
    dest = tmp_path / "o"
    opts = SyncOptions(source=parse_gs_url("gs://huge/d"), dest=dest, disk_free=lambda path: 5_000_000)
    with pytest.raises(SyncError) as e:
        engine_sync(opts, ClientFactory(resolve()))
    assert e.value.message == f"Not enough space on {dest}: 6.0 MB to fetch, 5.0 MB free."
    assert e.value.fix == "Free some space, pick a bigger disk, or narrow the sync with --include/--exclude."
    assert media(gcs) == 0 and not dest.exists()


def test_dest_is_a_file(tmp_path, gcs):
    gcs.create_bucket("dset", public=True)
    (tmp_path / "f").write_bytes(b"x")
    r = run_sync("gs://dset/d", str(tmp_path / "f"))
    _assert_error(r, 2, f"Error: DEST {tmp_path / 'f'} exists and is not a folder.")


def test_dest_not_writable(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    r = run_sync("gs://dset/d", "/proc/gcpdl-cannot-write")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("Error: Cannot write to /proc/gcpdl-cannot-write: ")


def test_on_and_local_together(tmp_path):
    r = CliRunner().invoke(cli, ["sync", "gs://dset/d", str(tmp_path / "o"), "--on", "box", "--local"])
    _assert_error(r, 2, "Error: Use either --on NAME or --local, not both.", tmp_path / "o")


def test_bad_jobs(tmp_path):
    r = run_sync("gs://dset/d", str(tmp_path / "o"), "--jobs", "0")
    _assert_error(r, 2, "Error: --jobs must be between 1 and 4096 (got 0).", tmp_path / "o")


# --- identities: the engine with injected credentials over a "real" endpoint ---------------------
def test_access_denied_names_identity_and_role(gcs, tmp_path, monkeypatch):
    from google.oauth2.credentials import Credentials

    from gcpdl.clients import ClientFactory
    from gcpdl.errors import PermissionDenied
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url

    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("GCPDL_STORAGE_ENDPOINT", gcs.url)  # e.g. Private Service Connect
    gcs.create_bucket("team", readers=["alice@example.com"])
    gcs.put("team", "d/a", b"for alice")

    def factory(who: str) -> ClientFactory:
        creds = Credentials(token=who)
        creds.service_account_email = who  # as a service account's credentials name themselves
        return ClientFactory(resolve(), credentials=creds)

    opts = SyncOptions(source=parse_gs_url("gs://team/d"), dest=tmp_path / "o")
    with pytest.raises(PermissionDenied) as e:
        engine_sync(opts, factory("bob@example.com"))
    assert e.value.message == "Access denied to gs://team for bob@example.com."
    assert e.value.fix == (
        "Grant it roles/storage.objectViewer: gcloud storage buckets add-iam-policy-binding gs://team"
        " --member=... --role=roles/storage.objectViewer"
    )
    assert not (tmp_path / "o").exists()
    s = engine_sync(opts, factory("alice@example.com"))
    assert s.files == 1 and (tmp_path / "o" / "a").read_bytes() == b"for alice"


# --- another implementation: gcp-storage-emulator ------------------------------------------------
def test_against_gcp_storage_emulator(gcs_emu, tmp_path):
    gcs_emu.create_bucket("emul")
    data = {f"set/{i:03d}.bin": os.urandom(1000 + i) for i in range(60)}
    data["set/big.bin"] = os.urandom(3 * 1024 * 1024 + 7)
    gcs_emu.put_many("emul", data)
    dest = tmp_path / "o"
    s = sync_json("gs://emul/set", str(dest), "--slice-size", str(1 << 20))
    assert (s["files"], s["failed"]) == (61, 0)
    assert tree(dest) == {k[len("set/"):]: v for k, v in data.items()}
    s = sync_json("gs://emul/set", str(dest))
    assert (s["files"], s["skipped"]) == (0, 61)


def test_progress_reports_files_bytes_and_completion(gcs, tmp_path):
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url

    gcs.create_bucket("prog", public=True)
    gcs.generate("prog", "d/", count=200, size=1000, seed=2)
    gcs.faults(latency=0.01)
    seen = []
    opts = SyncOptions(source=parse_gs_url("gs://prog/d"), dest=tmp_path / "o", jobs=8, progress_interval=0.02)
    s = engine_sync(opts, ClientFactory(resolve()), on_progress=seen.append)
    assert s.files == 200
    assert len(seen) >= 2  # periodic snapshots, then the final one
    last = seen[-1]
    assert (last.files_done, last.files_total, last.bytes_done, last.bytes_total, last.listing_done) == (200, 200, 200_000, 200_000, True)
    assert last.eta == 0.0 and last.files_per_s > 0 and last.mb_per_s > 0
    assert all(a.files_done <= b.files_done for a, b in zip(seen, seen[1:]))


def test_progress_lines_on_a_pipe(gcs, tmp_path, monkeypatch):
    import gcpdl.cli.sync as cli_sync

    monkeypatch.setattr(cli_sync, "LINE_EVERY", 0.0)  # a line per snapshot, for the test
    gcs.create_bucket("prog", public=True)
    gcs.put_many("prog", {"d/a": b"x" * 10, "d/b": b"y" * 10})
    r = run_sync("gs://prog/d", str(tmp_path / "o"), "--json")
    assert r.exit_code == 0
    assert "2/2 files, 0.0 MB/0.0 MB," in r.stderr and "(0 up to date)" in r.stderr
    assert json.loads(r.stdout)["files"] == 2  # stdout stays clean JSON


def test_unreachable_data_endpoint_fails_objects_not_the_disk(gcs, tmp_path):
    """Listing works but every media connection is refused: objects fail after retries with a
    clear reason, nothing is written, and it is not mistaken for a disk error."""
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url
    from tests.fixtures.ports import free_port

    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")

    class SplitFactory(ClientFactory):
        storage_endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there

        @property
        def storage_list_endpoint(self):  # listing still goes to the stand-in
            return ClientFactory(resolve()).storage_endpoint

    opts = SyncOptions(source=parse_gs_url("gs://dset/d"), dest=tmp_path / "o", retry_base=0.001)
    s = engine_sync(opts, SplitFactory(resolve()))
    assert s.failed == 1 and s.files == 0
    assert s.failures[0].name == "d/a"
    assert s.failures[0].reason.startswith("gave up after 6 attempts (ConnectionRefusedError")
    assert not (tmp_path / "o" / "a").exists()


def test_unreachable_endpoint_for_listing(tmp_path, monkeypatch):
    from tests.fixtures.ports import free_port

    port = free_port()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("gcpdl.sync.listing.PAGE_TIMEOUT", (0.05, 0.05))  # the retry budget follows
    monkeypatch.setattr("gcpdl.sync.listing.LIST_BACKOFF_BASE", 0.01)
    r = run_sync("gs://dset/d", str(tmp_path / "o"))
    _assert_error(
        r, 1,
        f"Error: Cannot list gs://dset at http://127.0.0.1:{port}: ConnectionRefusedError. Check the network, and"
        " GCPDL_STORAGE_ENDPOINT / STORAGE_EMULATOR_HOST if set.",
        tmp_path / "o",
    )


@pytest.mark.timeout(60)
def test_many_small_batches_do_not_stall_before_downloads_start(gcs, tmp_path, monkeypatch):
    """The planner never waits for a batch slot forever: many pages with little to fetch each
    take a slot, and the downloads (started with the first page) give them back."""
    import gcpdl.sync.engine as engine
    import gcpdl.sync.listing as listing

    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=1100, size=10, seed=3)
    dest = str(tmp_path / "o")
    assert sync_json("gs://dset/d", dest, "--exclude", "*[13579]")["files"] == 550
    monkeypatch.setattr(listing, "PAGE_SIZE", 2)  # pages of (even: done, odd: to fetch)
    monkeypatch.setattr(engine, "PLAN_AHEAD", 1000)  # 500 batch slots, and 550 to plan: never reached
    s = sync_json("gs://dset/d", dest)
    assert (s["files"], s["skipped"]) == (550, 550)


def test_abort_while_the_listing_is_still_running(gcs, tmp_path, monkeypatch):
    """A run-wide error (here: no space, seen when a later page's batch is checked against the
    listed total) while pages are still coming stops every thread; what finished is kept whole,
    no part file is left."""
    import gcpdl.sync.engine as engine
    import gcpdl.sync.listing as listing
    from gcpdl.clients import ClientFactory
    from gcpdl.errors import SyncError
    from gcpdl.settings import resolve
    from gcpdl.sync.url import parse_gs_url

    monkeypatch.setattr(listing, "PAGE_SIZE", 5)
    monkeypatch.setattr(engine, "PLAN_AHEAD", 10)  # two batch slots: the listing waits on the downloads
    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=400, size=100, seed=3)
    gcs.faults(latency=0.005)
    looks: list[str] = []

    def disk_free(path: str) -> int:
        # room for the first batch, then another process fills the disk: deterministic, where a
        # fixed 1500 B depended on whether downloads kept pace with the listing (flaky in CI)
        looks.append(path)
        return 1500 if len(looks) == 1 else 0

    opts = engine.SyncOptions(source=parse_gs_url("gs://dset/d"), dest=tmp_path / "o", disk_free=disk_free)
    with pytest.raises(SyncError) as e:
        engine.run_sync(opts, ClientFactory(resolve()))
    assert e.value.message.startswith(f"Not enough space on {tmp_path / 'o'}: ")
    kept = tree(tmp_path / "o")
    assert len(kept) < 400
    for rel, data in kept.items():
        assert data == gcs.object_bytes("dset", "d/" + rel)
    parts = tmp_path / "o" / ".gcpdl" / "parts"
    assert not parts.exists() or os.listdir(parts) == []
