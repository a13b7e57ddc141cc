"""The GCS stand-in, exercised by the real google-cloud-storage client over real HTTP.

If these pass, the stand-in speaks enough of the JSON API for the library (and so for the sync
engine built on the same endpoint); the faults are visible the way a real client sees them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import threading
import time
from urllib.parse import quote

import google_crc32c
import pytest
from google.api_core import exceptions as gexc


def _client(project: str = "test-project", identity: str | None = None):
    from google.cloud import storage

    if identity is None:
        return storage.Client(project=project)  # anonymous under STORAGE_EMULATOR_HOST
    from google.oauth2.credentials import Credentials

    # the stand-in reads the bearer token as the caller's identity
    return storage.Client(project=project, credentials=Credentials(token=identity))


def _raw(gcs, method: str, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection(gcs.host, gcs.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- listing -------------------------------------------------------------------------------------
def test_list_paginates_with_page_size(gcs):
    gcs.create_bucket("data", public=True)
    names = gcs.generate("data", "train/", count=2500, size=100, seed=1)
    gcs.put("data", "val/x", b"x")
    it = _client().list_blobs("data", prefix="train/", page_size=1000)
    pages = [[b.name for b in page] for page in it.pages]
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert sum(pages, []) == names == sorted(names)
    assert gcs.counters()["kind:list"] == 3


def test_max_results_is_capped_at_1000_like_gcs(gcs):
    gcs.create_bucket("data", public=True)
    gcs.generate("data", "", count=1200, size=1)
    status, _, body = _raw(gcs, "GET", "/storage/v1/b/data/o?maxResults=5000")
    doc = json.loads(body)
    assert status == 200 and len(doc["items"]) == 1000 and doc["nextPageToken"]
    status, _, body = _raw(gcs, "GET", "/storage/v1/b/data/o?pageToken=" + quote(doc["nextPageToken"]))
    assert [i["name"] for i in json.loads(body)["items"]] == [f"{i:06d}" for i in range(1000, 1200)]


def test_delimiter_lists_prefixes_and_pages_across_them(gcs):
    gcs.create_bucket("data", public=True)
    gcs.put_many("data", {"a/1": b"1", "a/2": b"2", "b/1": b"3", "c": b"4", "d/x/y": b"5"})
    it = _client().list_blobs("data", delimiter="/")
    assert [b.name for b in it] == ["c"]
    assert it.prefixes == {"a/", "b/", "d/"}
    # one entry per page: a prefix is one entry and a page token must skip the whole prefix
    seen = []
    token = ""
    while True:
        _, _, body = _raw(gcs, "GET", f"/storage/v1/b/data/o?delimiter=/&maxResults=1&pageToken={quote(token)}")
        doc = json.loads(body)
        seen += doc.get("prefixes", []) + [i["name"] for i in doc.get("items", [])]
        token = doc.get("nextPageToken")
        if not token:
            break
    assert seen == ["a/", "b/", "c", "d/"]


def test_fields_partial_response_and_offsets(gcs):
    gcs.create_bucket("data", public=True)
    gcs.generate("data", "p/", count=5, size=10)
    q = "fields=" + quote("items(name,size,generation,crc32c),nextPageToken,prefixes") + "&maxResults=2"
    _, _, body = _raw(gcs, "GET", "/storage/v1/b/data/o?" + q)
    doc = json.loads(body)
    assert set(doc) == {"items", "nextPageToken"}
    assert {tuple(sorted(i)) for i in doc["items"]} == {("crc32c", "generation", "name", "size")}
    _, _, body = _raw(gcs, "GET", "/storage/v1/b/data/o?startOffset=p/000001&endOffset=p/000003&fields=items/name")
    assert json.loads(body) == {"items": [{"name": "p/000001"}, {"name": "p/000002"}]}


# --- metadata and media --------------------------------------------------------------------------
def test_metadata_hashes_match_google_crc32c_and_md5(gcs):
    gcs.create_bucket("data", public=True)
    data = bytes(range(256)) * 1000
    gen = gcs.put("data", "dir/file name+é.bin", data, content_type="application/x-test")
    gcs.generate("data", "gen/", count=3, size=70_000, seed=7)
    bucket = _client().bucket("data")
    blob = bucket.get_blob("dir/file name+é.bin")
    assert (blob.size, blob.generation, blob.content_type) == (len(data), gen, "application/x-test")
    assert (blob.crc32c, blob.md5_hash) == (_crc(data), _md5(data))
    for name in ("gen/000000", "gen/000002"):
        expected = gcs.object_bytes("data", name)
        assert len(expected) == 70_000
        blob = bucket.get_blob(name)
        assert (blob.crc32c, blob.md5_hash) == (_crc(expected), _md5(expected))
        assert blob.download_as_bytes(checksum="crc32c") == expected
    assert gcs.object_bytes("data", "gen/000000") != gcs.object_bytes("data", "gen/000001")


def test_download_ranges_and_headers(gcs):
    gcs.create_bucket("data", public=True)
    data = bytes(range(256)) * 40
    gen = gcs.put("data", "f", data)
    blob = _client().bucket("data").blob("f")
    assert blob.download_as_bytes(start=10, end=19) == data[10:20]
    assert blob.download_as_bytes(start=10_000) == data[10_000:]
    status, h, body = _raw(gcs, "GET", "/download/storage/v1/b/data/o/f?alt=media", {"Range": "bytes=-5"})
    assert (status, body, h["Content-Range"]) == (206, data[-5:], f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}")
    assert h["x-goog-hash"] == f"crc32c={_crc(data)},md5={_md5(data)}"
    assert h["x-goog-generation"] == str(gen)
    status, h, _ = _raw(gcs, "GET", "/storage/v1/b/data/o/f?alt=media", {"Range": f"bytes={len(data)}-"})
    assert (status, h["Content-Range"]) == (416, f"bytes */{len(data)}")
    assert _raw(gcs, "GET", f"/storage/v1/b/data/o/f?alt=media&generation={gen + 1}")[0] == 404
    assert _raw(gcs, "GET", f"/storage/v1/b/data/o/f?alt=media&ifGenerationMatch={gen + 1}")[0] == 412
    assert _raw(gcs, "GET", f"/storage/v1/b/data/o/f?alt=media&generation={gen}")[2] == data


def test_large_generated_object_slices_are_position_dependent(gcs):
    gcs.create_bucket("data", public=True)
    gcs.generate("data", "big/", count=1, size=8 << 20, seed=3)
    whole = gcs.object_bytes("data", "big/000000")
    assert len(whole) == 8 << 20
    blob = _client().bucket("data").get_blob("big/000000")
    assert blob.crc32c == _crc(whole)
    mib = 1 << 20
    slices = [blob.download_as_bytes(start=i * mib, end=(i + 1) * mib - 1) for i in range(8)]
    assert b"".join(slices) == whole
    assert len(set(slices)) == 8  # a slice written at the wrong offset cannot pass the CRC
    # combining per-slice CRCs, as the engine does, gives the object's CRC32C
    crc = google_crc32c.Checksum()
    for s in slices:
        crc.update(s)
    assert base64.b64encode(crc.digest()).decode() == blob.crc32c


def test_upload_round_trip_simple_multipart_and_resumable(gcs):
    gcs.create_bucket("data")
    bucket = _client(identity="writer@example.com").bucket("data")
    bucket.blob("small.txt").upload_from_string(b"hello", content_type="text/plain")
    assert gcs.object_bytes("data", "small.txt") == b"hello"
    big = bytes(range(256)) * 5000  # over chunk_size: resumable, in two chunks
    blob = bucket.blob("big.bin", chunk_size=256 * 1024)
    blob.upload_from_string(big)
    assert gcs.object_bytes("data", "big.bin") == big
    got = bucket.get_blob("small.txt")
    assert (got.content_type, got.crc32c) == ("text/plain", _crc(b"hello"))
    status, _, body = _raw(gcs, "POST", "/upload/storage/v1/b/data/o?uploadType=media&name=raw", {"Authorization": "Bearer w@x", "Content-Length": "0"})
    assert status == 200 and json.loads(body)["size"] == "0"


# --- errors a user can cause ---------------------------------------------------------------------
def test_missing_bucket_is_not_found(gcs):
    client = _client()
    with pytest.raises(gexc.NotFound, match="The specified bucket does not exist."):
        client.get_bucket("nope")
    with pytest.raises(gexc.NotFound):
        list(client.list_blobs("nope"))
    status, _, body = _raw(gcs, "GET", "/storage/v1/b/nope/o/x?alt=media")
    assert status == 404 and json.loads(body)["error"]["errors"][0]["reason"] == "notFound"


def test_private_bucket_denies_anonymous_and_names_the_identity(gcs):
    gcs.create_bucket("secret")
    gcs.create_bucket("team", readers=["alice@example.com"])
    gcs.put("secret", "x", b"1")
    gcs.put("team", "x", b"2")
    with pytest.raises(gexc.Forbidden) as e:
        list(_client().list_blobs("secret"))
    assert "Anonymous caller does not have storage.objects.list access to the Google Cloud Storage bucket." in str(e.value)
    assert [b.name for b in _client(identity="bob@example.com").list_blobs("secret")] == ["x"]
    assert _client(identity="alice@example.com").bucket("team").blob("x").download_as_bytes() == b"2"
    with pytest.raises(gexc.Forbidden, match="bob@example.com does not have storage.objects.get access"):
        _client(identity="bob@example.com").bucket("team").blob("x").download_as_bytes()


def test_requester_pays_needs_a_user_project(gcs):
    gcs.create_bucket("rp", public=True, requester_pays=True)
    gcs.put("rp", "x", b"paid")
    client = _client()
    with pytest.raises(gexc.BadRequest, match="Bucket is a requester pays bucket but no user project provided."):
        list(client.list_blobs("rp"))
    bucket = client.bucket("rp", user_project="billing-proj")
    assert [b.name for b in client.list_blobs(bucket)] == ["x"]
    assert bucket.blob("x").download_as_bytes() == b"paid"


# --- faults --------------------------------------------------------------------------------------
def test_429_then_success_through_the_clients_retry(gcs):
    gcs.create_bucket("data", public=True)
    gcs.put("data", "f", b"payload")
    gcs.faults(fail_status=429, fail_count=2, fail_kinds=["media"])
    assert _client().bucket("data").blob("f").download_as_bytes() == b"payload"
    c = gcs.counters()
    assert c["faults:429"] == 2 and c["kind:media"] == 3


def test_503_for_matching_names_only(gcs):
    gcs.create_bucket("data", public=True)
    gcs.put_many("data", {"ok": b"1", "bad": b"2"})
    gcs.faults(fail_status=503, fail_count=5, fail_match="^bad$")
    assert _raw(gcs, "GET", "/storage/v1/b/data/o/ok?alt=media")[2] == b"1"
    status, _, body = _raw(gcs, "GET", "/storage/v1/b/data/o/bad?alt=media")
    assert status == 503 and json.loads(body)["error"]["code"] == 503
    assert gcs.counters()["faults:503"] == 1


def test_fail_fraction_hits_only_the_chosen_kinds(gcs):
    gcs.create_bucket("data", public=True)
    gcs.put("data", "f", b"1")
    gcs.faults(fail_status=503, fail_fraction=1.0, fail_kinds=["list"])
    assert _raw(gcs, "GET", "/storage/v1/b/data/o/f?alt=media")[0] == 200
    assert _raw(gcs, "GET", "/storage/v1/b/data/o/f")[0] == 200
    assert [_raw(gcs, "GET", "/storage/v1/b/data/o")[0] for _ in range(3)] == [503] * 3
    gcs.faults(fail_status=503, fail_fraction=0.5, seed=1)
    statuses = [_raw(gcs, "GET", "/storage/v1/b/data/o/f")[0] for _ in range(40)]
    assert 0 < statuses.count(503) < 40 and set(statuses) == {200, 503}


def test_corrupted_byte_is_caught_by_crc32c_validation(gcs):
    from google.cloud.storage.exceptions import DataCorruption

    gcs.create_bucket("data", public=True)
    data = b"0123456789" * 1000
    gcs.put("data", "f", data)
    gcs.faults(corrupt=100, corrupt_match="^f$")
    status, h, body = _raw(gcs, "GET", "/storage/v1/b/data/o/f?alt=media")
    assert status == 200 and body != data and len(body) == len(data)
    assert h["x-goog-hash"].startswith(f"crc32c={_crc(data)},")  # the header stays truthful
    with pytest.raises(DataCorruption):
        _client().bucket("data").blob("f").download_as_bytes(checksum="crc32c")
    gcs.faults()
    assert _client().bucket("data").blob("f").download_as_bytes(checksum="crc32c") == data


def test_connection_reset_mid_body(gcs):
    gcs.create_bucket("data", public=True)
    data = bytes(range(256)) * 4096  # 1 MiB, streamed
    gcs.put("data", "f", data)
    gcs.faults(reset_mid_body=1)
    conn = http.client.HTTPConnection(gcs.host, gcs.port, timeout=30)
    conn.request("GET", "/storage/v1/b/data/o/f?alt=media")
    r = conn.getresponse()
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        r.read()
    conn.close()
    assert gcs.counters()["resets"] == 1
    # the next request is served whole (the fault was for one response only)
    assert _raw(gcs, "GET", "/storage/v1/b/data/o/f?alt=media")[2] == data


def test_latency_is_added_before_each_response(gcs):
    gcs.create_bucket("data", public=True)
    gcs.put("data", "f", b"x")
    gcs.faults(latency=0.05)
    t0 = time.monotonic()
    _raw(gcs, "GET", "/storage/v1/b/data/o/f")
    assert time.monotonic() - t0 >= 0.05  # a lower bound the server guarantees, not a speed claim


def test_concurrent_keepalive_clients(gcs):
    gcs.create_bucket("data", public=True)
    names = gcs.generate("data", "c/", count=640, size=4096, seed=5)
    expected = {n: _crc(gcs.object_bytes("data", n)) for n in names}
    gcs.faults(latency=0.01)  # keeps requests overlapping, so in-flight > 1 is observable
    errors: list[str] = []

    def worker(part):
        conn = http.client.HTTPConnection(gcs.host, gcs.port, timeout=30)
        for n in part:
            conn.request("GET", f"/download/storage/v1/b/data/o/{quote(n, safe='')}?alt=media")
            r = conn.getresponse()
            if _crc(r.read()) != expected[n]:
                errors.append(n)
        conn.close()

    threads = [threading.Thread(target=worker, args=(names[i::64],)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = gcs.counters(detail=True)
    assert errors == []
    assert c["kind:media"] == 640 and c["bytes_served"] == 640 * 4096
    assert c["connections"] >= 64 and c["max_inflight"] > 1
    assert set(c["media_by_object"]) == set(names)


def test_delete_and_reset(gcs):
    gcs.create_bucket("data", public=True)
    gcs.put("data", "f", b"x")
    assert gcs.delete("data", "f") is True
    assert _raw(gcs, "GET", "/storage/v1/b/data/o/f")[0] == 404
    gcs.reset()
    assert _raw(gcs, "GET", "/storage/v1/b/data")[0] == 404
    assert gcs.counters()["requests"] == 1  # only the request made after the reset


# --- cross-check against gcp-storage-emulator ------------------------------------------------------
def _snapshot(url: str, monkeypatch, bucket: str) -> dict:
    """What a client sees: listing (with and without delimiter), metadata, whole and ranged media."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    client = _client()
    listed = {b.name: (b.size, b.crc32c, b.md5_hash) for b in client.list_blobs(bucket)}
    it = client.list_blobs(bucket, prefix="mixed/", delimiter="/")
    top = sorted(b.name for b in it)
    b = client.bucket(bucket)
    meta = {}
    media = {}
    for name in listed:
        blob = b.get_blob(name)
        meta[name] = (blob.size, blob.crc32c, blob.md5_hash, blob.content_type)
        media[name] = (
            _crc(blob.download_as_bytes(checksum="crc32c")),
            blob.download_as_bytes(start=3, end=10) if blob.size > 10 else None,
        )
    return {"listed": listed, "top": top, "prefixes": sorted(it.prefixes), "meta": meta, "media": media}


def test_standin_agrees_with_gcp_storage_emulator(gcs, gcs_emu, monkeypatch):
    explicit = {
        "mixed/a.txt": b"alpha",
        "mixed/sub/b.bin": bytes(range(256)) * 3,
        "mixed/sub/deeper/c": b"",
        "mixed/space name.jpg": b"\xff\xd8\xff" + b"j" * 5000,
        "top-level": b"t",
    }
    for server in (gcs, gcs_emu):
        server.create_bucket("same", public=True)
        for name, data in explicit.items():  # through each server's own upload path
            server.put("same", name, data, content_type="application/octet-stream")
        # generated: the emulator gets them through its data directory (more than a handful)
        server.generate("same", "gen/", count=30, size=3000, seed=9)
    ours = _snapshot(gcs.url, monkeypatch, "same")
    theirs = _snapshot(gcs_emu.url, monkeypatch, "same")
    assert len(ours["listed"]) == 35
    assert ours["top"] == theirs["top"] == ["mixed/a.txt", "mixed/space name.jpg"]
    assert ours["prefixes"] == theirs["prefixes"] == ["mixed/sub/"]
    for key in ("listed", "meta", "media"):
        assert ours[key] == theirs[key], key


def test_gcp_storage_emulator_limits_we_plan_around(gcs_emu):
    """Pin down the emulator's known limits (issue 4), so a change in them is noticed: an engine
    test that needs pagination or partial responses must use the stand-in."""
    gcs_emu.create_bucket("b")
    objects = {f"k/{i:03d}": bytes([i]) * i for i in range(25)}
    gcs_emu.put_many("b", objects)  # more than a handful: written to its data directory directly
    conn = http.client.HTTPConnection(gcs_emu.host, gcs_emu.port, timeout=30)
    conn.request("GET", "/storage/v1/b/b/o?maxResults=10&fields=items(name)")
    r = conn.getresponse()
    doc = json.loads(r.read())
    assert r.version == 10  # HTTP/1.0: a connection per request
    assert len(doc["items"]) == 25 and "nextPageToken" not in doc  # maxResults ignored
    assert "size" in doc["items"][0]  # fields ignored
    assert gcs_emu.object_bytes("b", "k/007") == objects["k/007"]
    assert _client().bucket("b").blob("k/024").download_as_bytes() == objects["k/024"]
