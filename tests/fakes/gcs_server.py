"""A fast Cloud Storage JSON-API stand-in, run in its own process.

Clients reach it with STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT. It is the ceiling in the sync
benchmark, so it is an asyncio server with a tiny HTTP/1.1 parser (keep-alive, many connections)
and in-memory objects: explicit ones (name -> bytes) and generated ones (a window onto a per-seed
pattern, see gcs_data) so 200,000 objects or a 512 MB object cost nothing to seed. CRC32C/MD5 are
computed lazily and cached.

Identity: a request's identity is its bearer token (`Authorization: Bearer alice@example.com`
reads as alice@example.com); no header is the anonymous caller. A public bucket admits anyone; a
private bucket admits any identity, or only `readers` when the bucket lists them.

Admin endpoints under /_admin/ (never counted, never delayed, never faulted) seed data, set
faults and latency, and read counters; tests/fakes/gcs_admin.py is their client.

Run: python -m tests.fakes.gcs_server [--port 0] [--latency 0.02]; the first stdout line is
"READY <port>".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import random
import re
import socket
import struct
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http import HTTPStatus
from urllib.parse import parse_qs, quote, unquote

try:  # a path, not a package, when run as a script
    from tests.fakes import gcs_data
except ImportError:  # pragma: no cover
    import gcs_data  # type: ignore

MAXCH = "\U0010ffff"
DEFAULT_MAX_RESULTS = 1000  # GCS default and cap for objects.list
STREAM_THRESHOLD = 256 * 1024  # bodies above this are written in chunks with drain()
PROJECT_NUMBER = "123456789012"

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def _error(code: int, message: str, reason: str) -> "Resp":
    body = {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}
    return Resp(code, body=json.dumps(body).encode(), ctype="application/json; charset=UTF-8", kind="error")


# --- fields= partial responses ------------------------------------------------------------------
def parse_fields(spec: str | None) -> dict | None:
    """'items(name,size),nextPageToken' -> {'items': {'name': {}, 'size': {}}, 'nextPageToken': {}}.
    Also accepts the path form 'items/name'. None means every field."""
    if not spec:
        return None
    pos = 0

    def parse_list(end_char: str | None) -> dict:
        nonlocal pos
        out: dict = {}
        while pos < len(spec):
            m = re.match(r"\s*([A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+)*)\s*", spec[pos:])
            if not m:
                raise ValueError(f"bad fields spec: {spec!r}")
            path = m.group(1).split("/")
            pos += m.end()
            node = out
            for p in path[:-1]:
                node = node.setdefault(p, {})
            leaf = node.setdefault(path[-1], {})
            if pos < len(spec) and spec[pos] == "(":
                pos += 1
                leaf.update(parse_list(")"))
            if pos < len(spec) and spec[pos] == ",":
                pos += 1
                continue
            if pos < len(spec) and spec[pos] == ")":
                if end_char != ")":
                    raise ValueError(f"bad fields spec: {spec!r}")
                pos += 1
                return out
        return out

    return parse_list(None)


def _want(tree: dict | None, key: str) -> bool:
    return tree is None or "*" in tree or key in tree


def _sub(tree: dict | None, key: str) -> dict | None:
    if tree is None or "*" in tree:
        return None
    sub = tree.get(key)
    return sub or None  # {} means "the whole thing"


# --- data model ---------------------------------------------------------------------------------
class Obj:
    __slots__ = ("name", "size", "generation", "content_type", "updated", "data", "seed", "offset", "_crc", "_md5", "_json")

    def __init__(self, name, size, generation, content_type, data=None, seed=0, offset=0):
        self.name = name
        self.size = size
        self.generation = generation
        self.content_type = content_type
        self.updated = _rfc3339(generation / 1e6)
        self.data = data
        self.seed = seed
        self.offset = offset
        self._crc = None
        self._md5 = None
        self._json = None

    def chunks(self, start: int = 0, end: int | None = None, chunk: int = gcs_data.CHUNK):
        end = self.size if end is None else end
        if self.data is not None:
            mv = memoryview(self.data)
            for pos in range(start, end, chunk):
                yield mv[pos : min(end, pos + chunk)]
        else:
            yield from gcs_data.iter_generated(self.seed, self.offset, start, end, chunk)

    @property
    def crc32c(self) -> str:
        if self._crc is None:
            self._crc = gcs_data.crc32c_of_chunks(self.chunks())
        return self._crc

    @property
    def md5(self) -> str:
        if self._md5 is None:
            self._md5 = gcs_data.md5_of_chunks(self.chunks())
        return self._md5

    def resource(self, bucket: str, base: str, tree: dict | None) -> dict:
        q = quote(self.name, safe="")
        g = str(self.generation)
        fields = {
            "kind": lambda: "storage#object",
            "id": lambda: f"{bucket}/{self.name}/{g}",
            "selfLink": lambda: f"{base}/storage/v1/b/{bucket}/o/{q}",
            "mediaLink": lambda: f"{base}/download/storage/v1/b/{bucket}/o/{q}?generation={g}&alt=media",
            "name": lambda: self.name,
            "bucket": lambda: bucket,
            "generation": lambda: g,
            "metageneration": lambda: "1",
            "contentType": lambda: self.content_type,
            "storageClass": lambda: "STANDARD",
            "size": lambda: str(self.size),
            "md5Hash": lambda: self.md5,
            "crc32c": lambda: self.crc32c,
            "etag": lambda: base64.b64encode(struct.pack(">QQ", self.generation, 1)).decode().rstrip("="),
            "timeCreated": lambda: self.updated,
            "updated": lambda: self.updated,
            "timeStorageClassUpdated": lambda: self.updated,
        }
        return {k: f() for k, f in fields.items() if _want(tree, k)}

    def item_json(self, bucket: str, base: str, fields_key: str, tree: dict | None) -> str:
        # listing pages are the hot path of a no-op re-sync: cache each item's serialisation
        cache = self._json
        key = (fields_key, base)
        if cache is None:
            cache = self._json = {}
        s = cache.get(key)
        if s is None:
            s = cache[key] = json.dumps(self.resource(bucket, base, tree), separators=(",", ":"))
        return s


class Bucket:
    def __init__(self, name: str, public: bool = False, requester_pays: bool = False, readers=None):
        self.name = name
        self.public = public
        self.requester_pays = requester_pays
        self.readers = set(readers) if readers else None
        self.objects: dict[str, Obj] = {}
        self._names: list[str] = []
        self._dirty = False
        self.created = time.time()

    def names(self) -> list[str]:
        if self._dirty:
            self._names = sorted(self.objects)
            self._dirty = False
        return self._names

    def add(self, obj: Obj) -> None:
        if obj.name not in self.objects:
            self._dirty = True
        self.objects[obj.name] = obj

    def remove(self, name: str) -> bool:
        if self.objects.pop(name, None) is None:
            return False
        self._dirty = True
        return True

    def resource(self, tree: dict | None) -> dict:
        ts = _rfc3339(self.created)
        full = {
            "kind": "storage#bucket",
            "id": self.name,
            "selfLink": f"/storage/v1/b/{self.name}",
            "projectNumber": PROJECT_NUMBER,
            "name": self.name,
            "timeCreated": ts,
            "updated": ts,
            "metageneration": "1",
            "location": "US",
            "locationType": "multi-region",
            "storageClass": "STANDARD",
            "etag": "CAE=",
            "billing": {"requesterPays": self.requester_pays},
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "inherited" if self.public else "enforced"},
        }
        return {k: v for k, v in full.items() if _want(tree, k)}


class Faults:
    def __init__(self, **kw):
        self.latency = float(kw.get("latency") or 0.0)
        self.fail_status = int(kw.get("fail_status") or 503)
        self.fail_count = int(kw.get("fail_count") or 0)
        self.fail_fraction = float(kw.get("fail_fraction") or 0.0)
        self.fail_match = re.compile(kw["fail_match"]) if kw.get("fail_match") else None
        self.fail_kinds = set(kw.get("fail_kinds") or ())  # empty: every kind
        self.reset_mid_body = int(kw.get("reset_mid_body") or 0)
        self.reset_match = re.compile(kw["reset_match"]) if kw.get("reset_match") else self.fail_match
        self.corrupt = int(kw.get("corrupt") or 0)
        self.corrupt_match = re.compile(kw["corrupt_match"]) if kw.get("corrupt_match") else None
        self.rng = random.Random(int(kw.get("seed") or 0))
        # Retry-After sent with fail_status answers (seconds or an HTTP-date; None: none, except
        # the "0" that 429s have always carried)
        self.retry_after = kw.get("retry_after")
        # the next stall_count requests of stall_kinds wait stall seconds before answering
        self.stall = float(kw.get("stall") or 0.0)
        self.stall_count = int(kw.get("stall_count") or 0)
        self.stall_kinds = set(kw.get("stall_kinds") or ())
        # the replace_after-th media request for a name matching replace_match is answered, then
        # the object is overwritten (new bytes, new generation): a mid-download overwrite
        self.replace_match = re.compile(kw["replace_match"]) if kw.get("replace_match") else None
        self.replace_after = int(kw.get("replace_after") or 0)
        # the next empty_pages listing pages (after the first) hold no items, only a nextPageToken
        # that resumes where they stood: GCS may answer so when a page's time runs out before it
        # found a live object ("a page with no items is not the end")
        self.empty_pages = int(kw.get("empty_pages") or 0)
        # listing pages after the first wait until a media response has been sent, at most this
        # many seconds (counted: holds_released / holds_expired): shows whether a client starts
        # downloading before its listing ends
        self.hold_pages = float(kw.get("hold_pages") or 0.0)

    def take_empty_page(self) -> bool:
        if self.empty_pages > 0:
            self.empty_pages -= 1
            return True
        return False

    def take_stall(self, kind: str) -> float:
        if self.stall_count > 0 and (not self.stall_kinds or kind in self.stall_kinds):
            self.stall_count -= 1
            return self.stall
        return 0.0

    def take_replace(self, subject: str) -> bool:
        if self.replace_after > 0 and self.replace_match is not None and self.replace_match.search(subject):
            self.replace_after -= 1
            return self.replace_after == 0
        return False

    @staticmethod
    def _hit(rx, subject: str) -> bool:
        return rx is None or rx.search(subject) is not None

    def take_failure(self, kind: str, subject: str) -> int | None:
        if self.fail_kinds and kind not in self.fail_kinds:
            return None
        if not self._hit(self.fail_match, subject):
            return None
        if self.fail_count > 0:
            self.fail_count -= 1
            return self.fail_status
        if self.fail_fraction and self.rng.random() < self.fail_fraction:
            return self.fail_status
        return None

    def take_reset(self, subject: str) -> bool:
        if self.reset_mid_body > 0 and self._hit(self.reset_match, subject):
            self.reset_mid_body -= 1
            return True
        return False

    def take_corrupt(self, subject: str) -> bool:
        if self.corrupt > 0 and self._hit(self.corrupt_match, subject):
            self.corrupt -= 1
            return True
        return False


class Resp:
    __slots__ = ("status", "headers", "body", "stream", "length", "ctype", "kind", "reset", "corrupt")

    def __init__(self, status=200, body=b"", ctype="application/json; charset=UTF-8", headers=None, stream=None, length=None, kind="other"):
        self.status = status
        self.body = body
        self.ctype = ctype
        self.headers = headers or []
        self.stream = stream
        self.length = len(body) if length is None else length
        self.kind = kind
        self.reset = False
        self.corrupt = False


_FAIL_MESSAGES = {
    429: ("The rate of change requests to the object exceeds the rate limit. Please reduce the rate of create, update, and delete requests.", "rateLimitExceeded"),
    500: ("We encountered an internal error. Please try again.", "backendError"),
    502: ("Bad Gateway", "backendError"),
    503: ("We encountered an internal error. Please try again.", "backendError"),
}


def _kind_of(target: str) -> str:
    """list / media / other, from the request target alone (for stalls, decided before dispatch)."""
    path, _, qs = target.partition("?")
    if "alt=media" in qs:
        return "media"
    return "list" if path.endswith("/o") else "other"


# --- the server ---------------------------------------------------------------------------------
class GcsServer:
    def __init__(self, latency: float = 0.0):
        self.default_latency = latency
        self.reset()

    def reset(self) -> None:
        self.epoch = getattr(self, "epoch", 0) + 1  # a request stalled across a reset is dropped
        self.buckets: dict[str, Bucket] = {}
        self.faults = Faults(latency=self.default_latency)
        self.media_sent = asyncio.Event()  # a media response went out since the last reset
        self.counters: Counter = Counter()
        self.media_by_object: Counter = Counter()
        self.inflight = 0
        self.uploads: dict[str, dict] = {}
        self._gen = time.time_ns() // 1000

    def next_generation(self) -> int:
        self._gen = max(self._gen + 1, time.time_ns() // 1000)
        return self._gen

    # --- connection loop ---------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters["connections"] += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    break
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await self._read_chunked(reader)
                else:
                    body = b""
                conn = headers.get("connection", "").lower()
                keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
                admin = target.startswith("/_admin/")
                if not admin:
                    self.inflight += 1
                    self.counters["max_inflight"] = max(self.counters["max_inflight"], self.inflight)
                try:
                    if not admin and self.faults.latency:
                        await asyncio.sleep(self.faults.latency)
                    if not admin and self.faults.stall_count:
                        stall = self.faults.take_stall(_kind_of(target))
                        if stall:
                            self.counters["stalls"] += 1
                            epoch = self.epoch
                            await asyncio.sleep(stall)
                            if epoch != self.epoch:  # never answer (or count) into the next test
                                break
                    if not admin and self.faults.hold_pages and "pageToken=" in target and _kind_of(target) == "list":
                        epoch, sent = self.epoch, self.media_sent
                        try:
                            await asyncio.wait_for(sent.wait(), self.faults.hold_pages)
                            self.counters["holds_released"] += 1
                        except asyncio.TimeoutError:
                            self.counters["holds_expired"] += 1
                        if epoch != self.epoch:
                            break
                    try:
                        resp = self.dispatch(method, target, headers, body)
                    except Exception as e:  # a stand-in bug should read as a 500, not a hung client
                        resp = _error(500, f"stand-in error: {e!r}", "backendError")
                    ok = await self._send(writer, resp, keep, head_only=method == "HEAD")
                    if not admin and resp.kind == "media":
                        self.media_sent.set()
                finally:
                    if not admin:
                        self.inflight -= 1
                if not ok or not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    @staticmethod
    async def _read_chunked(reader) -> bytes:
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readline()

    async def _send(self, writer, resp: Resp, keep: bool, head_only: bool = False) -> bool:
        hdr = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
               f"Content-Type: {resp.ctype}", f"Content-Length: {resp.length}"]
        hdr += [f"{k}: {v}" for k, v in resp.headers]
        if not keep:
            hdr.append("Connection: close")
        head = ("\r\n".join(hdr) + "\r\n\r\n").encode("latin-1")
        if head_only:
            writer.write(head)
            await writer.drain()
            return True
        if resp.reset:
            return await self._send_reset(writer, head, resp)
        if resp.stream is None:
            body = resp.body
            if resp.corrupt and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            writer.write(head + body)
            if resp.length > STREAM_THRESHOLD:
                await writer.drain()
            return True
        writer.write(head)
        first = True
        for chunk in resp.stream:
            if first and resp.corrupt and len(chunk):
                chunk = bytes([chunk[0] ^ 0xFF]) + bytes(chunk[1:])
            first = False
            writer.write(chunk)
            await writer.drain()
        return True

    async def _send_reset(self, writer, head: bytes, resp: Resp) -> bool:
        """Headers and half the body, then a TCP RST (SO_LINGER 0), like a dropped connection."""
        self.counters["resets"] += 1
        half = resp.length // 2
        sent = 0
        writer.write(head)
        chunks = resp.stream if resp.stream is not None else [resp.body]
        for chunk in chunks:
            take = min(len(chunk), half - sent)
            if take <= 0:
                break
            writer.write(bytes(chunk[:take]))
            sent += take
        try:
            await writer.drain()
        except ConnectionError:
            return False
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return False

    # --- routing -----------------------------------------------------------------------------
    def dispatch(self, method: str, target: str, headers: dict, body: bytes) -> Resp:
        path, _, qs = target.partition("?")
        q = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
        if path.startswith("/_admin/"):
            return self.admin(method, path[len("/_admin/"):], q, body)
        self.counters["requests"] += 1
        base = "http://" + headers.get("host", "127.0.0.1")
        parts = path.split("/")
        # /storage/v1/b/B[/o[/NAME]]  /download/storage/v1/b/B/o/NAME  /upload/storage/v1/b/B/o
        lead = 0
        if parts[1:2] == ["download"] or parts[1:2] == ["upload"]:
            lead = 1
        if parts[1 + lead : 4 + lead] != ["storage", "v1", "b"] or len(parts) < 5 + lead:
            self.counters["kind:unknown"] += 1
            return _error(404, f"Not Found: {path}", "notFound")
        bucket_name = unquote(parts[4 + lead])
        rest = parts[5 + lead :]
        name = unquote("/".join(rest[1:])) if len(rest) >= 2 and rest[0] == "o" else None
        upload = parts[1] == "upload"
        if upload:
            kind = "upload"
        elif name is not None and q.get("alt") == "media":
            kind = "media"
        elif name is not None:
            kind = "meta" if method in ("GET", "HEAD") else "write"
        elif rest == ["o"]:
            kind = "list" if method == "GET" else "upload"
        elif not rest:
            kind = "bucket"
        else:
            kind = "unknown"
        self.counters["kind:" + kind] += 1
        subject = name if name is not None else path
        status = self.faults.take_failure(kind, subject)
        if status is not None:
            self.counters[f"faults:{status}"] += 1
            msg, reason = _FAIL_MESSAGES.get(status, (HTTPStatus(status).phrase, "backendError"))
            resp = _error(status, msg, reason)
            if self.faults.retry_after is not None:
                resp.headers.append(("Retry-After", str(self.faults.retry_after)))
            elif status == 429:
                resp.headers.append(("Retry-After", "0"))
            return resp
        resp = self.route(method, kind, bucket_name, name, q, headers, body, base)
        self.counters[f"status:{resp.status}"] += 1
        return resp

    def route(self, method, kind, bucket_name, name, q, headers, body, base) -> Resp:
        bucket = self.buckets.get(bucket_name)
        if bucket is None:
            return _error(404, "The specified bucket does not exist.", "notFound")
        perm = {
            "bucket": "storage.buckets.get", "list": "storage.objects.list", "meta": "storage.objects.get",
            "media": "storage.objects.get", "upload": "storage.objects.create", "write": "storage.objects.delete",
        }.get(kind, "storage.objects.get")
        denied = self.check_access(bucket, headers, perm)
        if denied is not None:
            return denied
        if bucket.requester_pays and not q.get("userProject"):
            return _error(400, "Bucket is a requester pays bucket but no user project provided.", "required")
        try:
            tree = parse_fields(q.get("fields"))
        except ValueError as e:
            return _error(400, str(e), "invalidParameter")
        if kind == "bucket" and method == "GET":
            return self.json_resp(bucket.resource(tree), kind)
        if kind == "list":
            return self.list_objects(bucket, q, tree, base)
        if kind == "upload":
            return self.upload(method, bucket, q, headers, body, base, tree)
        if kind in ("meta", "media", "write"):
            obj = bucket.objects.get(name)
            if obj is None or (q.get("generation") and q["generation"] != str(obj.generation)):
                return _error(404, f"No such object: {bucket.name}/{name}", "notFound")
            if q.get("ifGenerationMatch") and q["ifGenerationMatch"] != str(obj.generation):
                return _error(412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet")
            if kind == "write":
                if method != "DELETE":
                    return _error(405, "Method not allowed", "methodNotAllowed")
                bucket.remove(name)
                return Resp(204, b"", kind="write")
            if kind == "meta":
                return self.json_resp(obj.resource(bucket.name, base, tree), kind)
            resp = self.media(obj, headers)
            if self.faults.take_replace(name):
                self.counters["replaced"] += 1
                bucket.add(Obj(name, obj.size, self.next_generation(), obj.content_type, data=b"R" * obj.size))
            return resp
        return _error(404, "Not Found", "notFound")

    @staticmethod
    def json_resp(doc: dict, kind: str) -> Resp:
        return Resp(200, json.dumps(doc, separators=(",", ":")).encode(), kind=kind)

    @staticmethod
    def check_access(bucket: Bucket, headers: dict, perm: str) -> Resp | None:
        if bucket.public and perm in ("storage.objects.get", "storage.objects.list", "storage.buckets.get"):
            return None
        auth = headers.get("authorization", "")
        who = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if who and (bucket.readers is None or who in bucket.readers):
            return None
        ident = who or "Anonymous caller"
        if who and "@" not in who:
            ident = f"{who}@example.iam.gserviceaccount.com"
        return _error(
            403,
            f"{ident} does not have {perm} access to the Google Cloud Storage "
            f"{'bucket' if perm.endswith(('list', 'buckets.get')) else 'object'}. "
            f"Permission '{perm}' denied on resource (or it may not exist).",
            "forbidden",
        )

    # --- objects.list ------------------------------------------------------------------------
    def list_objects(self, bucket: Bucket, q: dict, tree: dict | None, base: str) -> Resp:
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        try:
            max_results = min(int(q.get("maxResults") or DEFAULT_MAX_RESULTS), DEFAULT_MAX_RESULTS)
        except ValueError:
            return _error(400, "Invalid value for maxResults", "invalid")
        if max_results <= 0:
            max_results = DEFAULT_MAX_RESULTS
        names = bucket.names()
        lo = bisect.bisect_left(names, prefix) if prefix else 0
        if q.get("startOffset"):
            lo = max(lo, bisect.bisect_left(names, q["startOffset"]))
        end_offset = q.get("endOffset") or None
        token = q.get("pageToken")
        if token and self.faults.take_empty_page():
            body = '{"nextPageToken":' + json.dumps(token) + "}" if _want(tree, "nextPageToken") else "{}"
            return Resp(200, body.encode(), kind="list")
        if token:
            try:
                after, skip = json.loads(base64.urlsafe_b64decode(token.encode()))
            except Exception:
                return _error(400, "Invalid page token.", "invalid")
            lo = max(lo, bisect.bisect_left(names, after + MAXCH) if skip else bisect.bisect_right(names, after))
        items: list[Obj] = []
        prefixes: list[str] = []
        last = None
        next_token = None
        i, n, plen = lo, len(names), len(prefix)
        while i < n:
            nm = names[i]
            if plen and not nm.startswith(prefix):
                break
            if end_offset is not None and nm >= end_offset:
                break
            if len(items) + len(prefixes) >= max_results:
                next_token = base64.urlsafe_b64encode(json.dumps(last).encode()).decode()
                break
            if delimiter:
                k = nm.find(delimiter, plen)
                if k >= 0:
                    p = nm[: k + len(delimiter)]
                    prefixes.append(p)
                    last = (p, True)
                    i = bisect.bisect_left(names, p + MAXCH, i)
                    continue
            items.append(bucket.objects[nm])
            last = (nm, False)
            i += 1
        # hand-assembled JSON so cached per-item serialisations are reused across pages and runs
        out = []
        if _want(tree, "kind"):
            out.append('"kind":"storage#objects"')
        if next_token and _want(tree, "nextPageToken"):
            out.append('"nextPageToken":' + json.dumps(next_token))
        if prefixes and _want(tree, "prefixes"):
            out.append('"prefixes":' + json.dumps(prefixes))
        if items and _want(tree, "items"):
            sub = _sub(tree, "items")
            key = json.dumps(sub, sort_keys=True) if sub else "*"
            out.append('"items":[' + ",".join(o.item_json(bucket.name, base, key, sub) for o in items) + "]")
        self.counters["listed_items"] += len(items)
        return Resp(200, ("{" + ",".join(out) + "}").encode(), kind="list")

    # --- media -------------------------------------------------------------------------------
    def media(self, obj: Obj, headers: dict) -> Resp:
        size = obj.size
        start, end, status = 0, size, 200
        rng = headers.get("range")
        extra = [
            ("x-goog-hash", f"crc32c={obj.crc32c},md5={obj.md5}"),
            ("x-goog-generation", str(obj.generation)),
            ("x-goog-metageneration", "1"),
            ("x-goog-stored-content-length", str(size)),
            ("x-goog-stored-content-encoding", "identity"),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{obj.md5}"'),
        ]
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return _error(400, f"Invalid range: {rng}", "invalid")
            a, b = m.group(1), m.group(2)
            if a == "":
                start, end = max(0, size - int(b)), size
            else:
                start, end = int(a), (min(int(b) + 1, size) if b else size)
            if start >= size or (a != "" and b != "" and int(b) < int(a)):
                r = _error(416, "The requested range cannot be satisfied.", "requestedRangeNotSatisfiable")
                r.headers.append(("Content-Range", f"bytes */{size}"))
                return r
            status = 206
            extra.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        length = end - start
        self.counters["bytes_served"] += length
        self.media_by_object[obj.name] += 1
        if length > STREAM_THRESHOLD:
            resp = Resp(status, ctype=obj.content_type, headers=extra, stream=obj.chunks(start, end), length=length, kind="media")
        else:
            body = obj.data[start:end] if obj.data is not None else b"".join(obj.chunks(start, end))
            resp = Resp(status, body, ctype=obj.content_type, headers=extra, kind="media")
        resp.reset = self.faults.take_reset(obj.name)
        resp.corrupt = not resp.reset and self.faults.take_corrupt(obj.name)
        if resp.corrupt:
            self.counters["corrupted"] += 1
        return resp

    # --- uploads -----------------------------------------------------------------------------
    def _store(self, bucket: Bucket, name: str, data: bytes, ctype: str | None, q: dict) -> Resp | Obj:
        if not name:
            return _error(400, "Required parameter: name", "required")
        cur = bucket.objects.get(name)
        igm = q.get("ifGenerationMatch")
        if igm is not None and igm != (str(cur.generation) if cur else "0"):
            return _error(412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet")
        obj = Obj(name, len(data), self.next_generation(), ctype or "application/octet-stream", data=bytes(data))
        bucket.add(obj)
        return obj

    def upload(self, method, bucket: Bucket, q, headers, body: bytes, base, tree) -> Resp:
        utype = q.get("uploadType", "media")
        if method == "PUT" and q.get("upload_id"):
            return self._resumable_put(bucket, q, headers, body, base, tree)
        if utype == "media":
            res = self._store(bucket, q.get("name", ""), body, headers.get("content-type"), q)
        elif utype == "multipart":
            m = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
            if not m:
                return _error(400, "multipart upload without a boundary", "invalid")
            parts = body.split(b"--" + m.group(1).encode())
            meta_part, media_part = parts[1], parts[2]
            meta = json.loads(meta_part.partition(b"\r\n\r\n")[2].strip() or b"{}")
            mh, _, data = media_part.partition(b"\r\n\r\n")
            if data.endswith(b"\r\n"):
                data = data[:-2]
            ctype = meta.get("contentType")
            if not ctype:
                cm = re.search(rb"(?i)content-type:\s*([^\r\n]+)", mh)
                ctype = cm.group(1).decode() if cm else None
            res = self._store(bucket, meta.get("name") or q.get("name", ""), data, ctype, q)
        elif utype == "resumable":
            meta = json.loads(body or b"{}")
            uid = uuid.uuid4().hex
            self.uploads[uid] = {"name": meta.get("name") or q.get("name", ""), "ctype": meta.get("contentType") or headers.get("x-upload-content-type"), "data": bytearray(), "q": q}
            loc = f"{base}/upload/storage/v1/b/{bucket.name}/o?uploadType=resumable&upload_id={uid}"
            return Resp(200, b"", headers=[("Location", loc), ("X-GUploader-UploadID", uid)], kind="upload")
        else:
            return _error(400, f"Invalid uploadType: {utype}", "invalid")
        if isinstance(res, Resp):
            return res
        return self.json_resp(res.resource(bucket.name, base, tree), "upload")

    def _resumable_put(self, bucket, q, headers, body, base, tree) -> Resp:
        up = self.uploads.get(q["upload_id"])
        if up is None:
            return _error(404, "No such upload", "notFound")
        cr = headers.get("content-range", "")
        m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", cr.strip()) if cr else None
        if body:
            up["data"] += body
        total = m.group(3) if m else str(len(up["data"]))
        if total != "*" and int(total) == len(up["data"]):
            del self.uploads[q["upload_id"]]
            res = self._store(bucket, up["name"], bytes(up["data"]), up["ctype"], up["q"])
            if isinstance(res, Resp):
                return res
            return self.json_resp(res.resource(bucket.name, base, tree), "upload")
        hdrs = [("Range", f"bytes=0-{len(up['data']) - 1}")] if up["data"] else []
        return Resp(308, b"", headers=hdrs, kind="upload")

    # --- admin -------------------------------------------------------------------------------
    def admin(self, method: str, op: str, q: dict, body: bytes) -> Resp:
        doc = json.loads(body) if body and op not in ("put", "put_many") else {}
        if op == "reset":
            self.reset()
            return self.json_resp({"ok": True}, "admin")
        if op == "buckets":
            b = Bucket(doc["name"], bool(doc.get("public")), bool(doc.get("requester_pays")), doc.get("readers"))
            self.buckets[b.name] = b
            return self.json_resp({"ok": True}, "admin")
        bucket = self.buckets.get(q.get("bucket") or doc.get("bucket", ""))
        if op == "faults":
            if doc.get("latency") is None:  # not given: the latency the server was started with
                doc["latency"] = self.default_latency
            self.faults = Faults(**doc)
            return self.json_resp({"ok": True}, "admin")
        if op == "counters":
            out = dict(self.counters)
            out["inflight"] = self.inflight
            if q.get("detail"):
                out["media_by_object"] = dict(self.media_by_object)
            return self.json_resp(out, "admin")
        if bucket is None:
            return _error(404, "The specified bucket does not exist.", "notFound")
        if op == "put":
            obj = Obj(q["name"], len(body), self.next_generation(), q.get("contentType") or "application/octet-stream", data=body)
            bucket.add(obj)
            return self.json_resp({"generation": str(obj.generation)}, "admin")
        if op == "put_many":
            # body: 8-byte big-endian length of a JSON index [[name, size, ctype], ...], then the data
            (hlen,) = struct.unpack(">Q", body[:8])
            index = json.loads(body[8 : 8 + hlen])
            pos = 8 + hlen
            for name, size, ctype in index:
                bucket.add(Obj(name, size, self.next_generation(), ctype or "application/octet-stream", data=body[pos : pos + size]))
                pos += size
            return self.json_resp({"count": len(index)}, "admin")
        if op == "generate":
            count, size, seed, prefix = int(doc["count"]), int(doc["size"]), int(doc.get("seed", 0)), doc.get("prefix", "")
            ctype = doc.get("content_type") or "application/octet-stream"
            gen = self.next_generation()
            for i in range(count):
                name = gcs_data.generated_name(prefix, i, count)
                bucket.add(Obj(name, size, gen + i, ctype, seed=seed, offset=gcs_data.offset_for(name, seed)))
            self._gen = gen + count
            return self.json_resp({"count": count}, "admin")
        if op == "object":
            obj = bucket.objects.get(q.get("name", ""))
            if obj is None:
                return _error(404, "No such object", "notFound")
            if obj.data is not None:
                return Resp(200, obj.data, ctype="application/octet-stream", kind="admin")
            return Resp(200, ctype="application/octet-stream", stream=obj.chunks(), length=obj.size, kind="admin")
        if op == "meta":
            obj = bucket.objects.get(q.get("name", ""))
            if obj is None:
                return _error(404, "No such object", "notFound")
            return self.json_resp(obj.resource(bucket.name, "", None), "admin")
        if op == "delete":
            ok = bucket.remove(q.get("name", ""))
            return self.json_resp({"deleted": ok}, "admin")
        if op == "warm":
            # compute hashes ahead of a measurement, so no timed run pays for the lazy MD5/CRC32C
            prefix = doc.get("prefix", "")
            n = 0
            for name in bucket.names():
                if name.startswith(prefix):
                    obj = bucket.objects[name]
                    obj.crc32c, obj.md5
                    n += 1
            return self.json_resp({"count": n}, "admin")
        return _error(404, f"unknown admin op {op}", "notFound")


async def serve(host: str, port: int, latency: float) -> None:
    server = GcsServer(latency)
    srv = await asyncio.start_server(server.handle, host, port, backlog=1024, limit=1 << 20)
    port = srv.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    async with srv:
        await srv.serve_forever()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added before every response")
    args = ap.parse_args(argv)
    try:
        import uvloop  # optional: faster loop when installed

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.host, args.port, args.latency))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
