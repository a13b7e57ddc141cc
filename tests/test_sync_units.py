"""Pure parts of gcpdl sync: URL parsing, safe paths, filters, CRC32C combine, state, ramp."""

from __future__ import annotations

import asyncio
import random

import google_crc32c
import pytest

from gcpdl.errors import InvalidInput, SyncError
from gcpdl.sync.paths import Filters, Unsafe, relative_path
from gcpdl.sync.ramp import RateLimiter, Window
from gcpdl.sync.state import State
from gcpdl.sync.url import parse_gs_url
from gcpdl.sync.verify import combine_slices, crc32c_combine, decode_gcs_crc, encode_gcs_crc


@pytest.mark.parametrize(
    "url, bucket, prefix",
    [
        ("gs://my-bucket", "my-bucket", ""),
        ("gs://my-bucket/", "my-bucket", ""),
        ("gs://my-bucket/data", "my-bucket", "data/"),
        ("gs://my-bucket/data/train/", "my-bucket", "data/train/"),
        ("gs://a.b_c-1/x", "a.b_c-1", "x/"),
    ],
)
def test_parse_gs_url(url, bucket, prefix):
    u = parse_gs_url(url)
    assert (u.bucket, u.prefix) == (bucket, prefix)


@pytest.mark.parametrize(
    "url, message",
    [
        ("s3://b/x", "'s3://b/x' is not a gs:// URL. Use gs://BUCKET/PATH, https://storage.googleapis.com/BUCKET/PATH or a Cloud Console bucket link."),
        ("gs://", "'gs://' names no bucket. Use gs://BUCKET or gs://BUCKET/PREFIX."),
        ("gs:///x", "'gs:///x' names no bucket. Use gs://BUCKET or gs://BUCKET/PREFIX."),
        ("gs://Bad_Bucket", "'Bad_Bucket' is not a valid bucket name (lowercase letters, digits, '-', '_' and '.')."),
        ("gs://ab", "'ab' is not a valid bucket name (lowercase letters, digits, '-', '_' and '.')."),
        ("gs://b-b/x\x00y", "The prefix in 'gs://b-b/x\x00y' contains a control character."),
    ],
)
def test_parse_gs_url_rejects(url, message):
    with pytest.raises(InvalidInput) as e:
        parse_gs_url(url)
    assert e.value.message == message


@pytest.mark.parametrize(
    "name, prefix, expected",
    [
        ("data/a.jpg", "data/", "a.jpg"),
        ("data/sub/a.jpg", "data/", "sub/a.jpg"),
        ("a", "", "a"),
        ("data/sub/", "data/", None),  # folder placeholder
        ("data/../etc/passwd", "data/", Unsafe("data/../etc/passwd", "has a '..' path component")),
        ("data/..", "data/", Unsafe("data/..", "has a '..' path component")),
        ("data/a//x", "data/", Unsafe("data/a//x", "has a '//' path component")),
        ("data//x", "data/", Unsafe("data//x", "is an absolute path")),
        ("/etc/passwd", "", Unsafe("/etc/passwd", "is an absolute path")),
        ("data/a\x00b", "data/", Unsafe("data/a\x00b", "contains a control character")),
        ("data/./a", "data/", Unsafe("data/./a", "has a '.' path component")),
        (".gcpdl/state.sqlite", "", Unsafe(".gcpdl/state.sqlite", "would overwrite gcpdl's own .gcpdl/ state directory")),
        ("x/" + "n" * 256, "x/", Unsafe("x/" + "n" * 256, "has a path component longer than 255 bytes")),
    ],
)
def test_relative_path(name, prefix, expected):
    assert relative_path(name, prefix) == expected


def test_filters():
    f = Filters(include=("*.jpg",), exclude=("bad/*", "*-tmp.jpg"))
    assert f.keep("a.jpg") and f.keep("train/x/a.jpg")
    assert not f.keep("a.png")
    assert not f.keep("bad/a.jpg")
    assert not f.keep("x/a-tmp.jpg")
    assert not Filters()
    assert Filters().keep("anything")


def test_crc_encoding_roundtrip():
    value = google_crc32c.value(b"hello")
    assert decode_gcs_crc(encode_gcs_crc(value)) == value
    assert encode_gcs_crc(value) == "mnG7TA=="  # what GCS reports for b"hello"
    assert decode_gcs_crc(None) is None and decode_gcs_crc("!!") is None


def test_crc32c_combine_matches_whole_object():
    rnd = random.Random(7)
    data = rnd.randbytes(300_001)
    whole = google_crc32c.value(data)
    for cut in (0, 1, 4095, 150_000, 300_000, 300_001):
        a, b = data[:cut], data[cut:]
        assert crc32c_combine(google_crc32c.value(a), google_crc32c.value(b), len(b)) == whole
    # uneven slices, as a sliced download produces them
    bounds = sorted(rnd.sample(range(1, len(data)), 9))
    slices, start = [], 0
    for end in bounds + [len(data)]:
        slices.append((google_crc32c.value(data[start:end]), end - start))
        start = end
    assert combine_slices(slices) == whole
    # a slice at the wrong offset must not pass
    swapped = [slices[1], slices[0]] + slices[2:]
    assert combine_slices(swapped) != whole


def test_state_roundtrip_and_lock(tmp_path):
    st = State(tmp_path)
    st.record("a/b.jpg", 5, 10, 1234, 99)
    st.record("a/c.jpg", 6, 11, None, 100)
    st.record("z.jpg", 7, 12, 1, 101)
    with pytest.raises(SyncError) as e:
        State(tmp_path)
    assert e.value.message.startswith("Another gcpdl sync (pid ") and e.value.message.endswith(f" is already writing to {tmp_path}.")
    st.flush()
    rows = st.rows_between("a/", "a/\uffff")
    assert sorted(rows) == ["a/b.jpg", "a/c.jpg"]
    assert rows["a/b.jpg"] == (5, 10, 1234, 99)
    st.forget("z.jpg")
    st.close()
    st2 = State(tmp_path)  # the lock went with the first one
    assert st2.rows_between("", "\uffff").keys() == {"a/b.jpg", "a/c.jpg"}
    st2.close()


def test_window_grows_and_halves_on_throttle():
    clock = [0.0]
    w = Window(64, initial=4, clock=lambda: clock[0])

    async def scenario():
        for _ in range(4):
            await w.acquire()
        assert w.in_use == 4
        waiter = asyncio.ensure_future(w.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()  # the window is full
        w.release()  # slow start: limit 5, and the waiter gets the slot
        await asyncio.sleep(0)
        assert waiter.done() and w.in_use == 4 and w.limit == 5
        for _ in range(40):
            await w.acquire()
            w.release()
        assert w.limit == 45
        w.release(throttled=True)
        assert w.limit == 22.5
        w.release(throttled=True)  # a second 429 within a second does not cut again
        assert w.limit == 22.5
        clock[0] = 2.0
        w.release(throttled=True)
        assert w.limit == 11.25 and not w.slow_start

    asyncio.run(scenario())


def test_rate_limiter_doubles_every_period():
    clock = [0.0]
    rl = RateLimiter(rate=5000, doubling_s=1200, clock=lambda: clock[0])
    assert rl.rate(0) == 5000 and rl.rate(1199) == 5000 and rl.rate(1200) == 10000 and rl.rate(2400) == 20000


def test_request_timeout_fires_and_can_be_pushed_back():
    from gcpdl.sync.transfer import _Timeout

    async def scenario():
        with pytest.raises(TimeoutError):
            async with _Timeout(0.01):
                await asyncio.sleep(5)
        loop = asyncio.get_running_loop()
        async with _Timeout(0.01) as tm:
            tm.reschedule(loop.time() + 5)
            await asyncio.sleep(0.03)  # would have fired without the reschedule
        return True

    assert asyncio.run(scenario())


def test_sync_command_module_imports_no_google_library():
    import subprocess
    import sys

    code = "import sys, gcpdl.cli.sync; print(sorted(m for m in sys.modules if m.startswith('google')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_refuses_to_run_without_the_c_crc32c(monkeypatch, tmp_path):
    import google_crc32c
    from click.testing import CliRunner

    from gcpdl.cli.app import cli

    monkeypatch.setattr(google_crc32c, "implementation", "python")
    r = CliRunner().invoke(cli, ["sync", "gs://dset/d", str(tmp_path / "o"), "--local"])
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: google-crc32c has no C extension on this machine, so checksums would be too slow to verify every"
        " object. Reinstall it from a wheel: pip install --force-reinstall --only-binary=:all: google-crc32c\n"
    )
    assert not (tmp_path / "o").exists()
