"""List a bucket over raw HTTP/JSON (objects.list), the way the data path fetches.

The listing is the first thing a sync does, so what it costs before its first request is what
every sync waits for: google-cloud-storage costs ~0.3 s of imports (requests, google-api-core,
protobuf helpers) before it sends anything. This is the stdlib's http.client on one keep-alive
connection: the same endpoint (GCPDL_STORAGE_ENDPOINT / STORAGE_EMULATOR_HOST through the client
factory), the same credentials (a bearer token from google-auth), userProject for requester-pays,
and the JSON API's documented parameters (prefix, pageToken, maxResults, fields):
https://cloud.google.com/storage/docs/json_api/v1/objects/list

Retries follow the library's policy for a read (408/429/5xx, connection errors, timeouts) under
listing.list_retry_budget() per page; errors map to the same one-line messages
(listing.map_status).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlencode

from gcpdl.deadline import backoff
from gcpdl.errors import SyncError
from gcpdl.sync import listing
from gcpdl.sync.listing import ObjectRecord
from gcpdl.sync.transfer import RETRY_STATUSES, Endpoint, _tls_context, bearer_token
from gcpdl.sync.verify import decode_gcs_crc


# a nextPageToken with no escapes in it (GCS's are URL-safe base64), found in a page's raw bytes
_TOKEN = re.compile(rb'"nextPageToken"\s*:\s*"([^"\\]*)"')


class _Retry(Exception):
    def __init__(self, reason: str, status: int | None = None, message: str = ""):
        super().__init__(reason)
        self.status = status
        self.message = message


class RawLister:
    """Pages of ObjectRecord for gs://bucket/prefix, in name order."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        prefix: str,
        credentials: Any | None,
        user_project: str | None = None,
        identity: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.endpoint = Endpoint.parse(endpoint)
        self.bucket = bucket
        self.prefix = prefix
        self.credentials = credentials
        self.user_project = user_project
        self.identity = identity
        self.sleep = sleep
        self._conn: http.client.HTTPConnection | None = None
        self._path = f"{self.endpoint.base}/storage/v1/b/{quote(bucket, safe='')}/o"
        self.requests = 0

    @property
    def base_url(self) -> str:
        return f"{self.endpoint.scheme}://{self.endpoint.host_header}{self.endpoint.base}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def pages(self) -> Iterator[list[ObjectRecord]]:
        token: str | None = None
        ahead: str | None = None  # the token whose request is already on the connection
        try:
            while True:
                body, ahead = self._page(token, sent=ahead is not None and ahead == token)
                items = body.get("items") or ()
                yield [
                    ObjectRecord(
                        i["name"],
                        int(i.get("size", 0)),
                        int(i.get("generation", 0) or 0),
                        decode_gcs_crc(i.get("crc32c")),
                        i.get("md5Hash"),
                    )
                    for i in items
                ]
                token = body.get("nextPageToken")
                if ahead is not None and ahead != token:
                    self.close()  # an answer we do not want is on its way: drop the connection
                    ahead = None
                if not token:
                    return
        finally:
            self.close()

    def _target(self, token: str | None) -> str:
        q = {"maxResults": str(listing.PAGE_SIZE), "fields": listing.LIST_FIELDS}
        if self.prefix:
            q["prefix"] = self.prefix
        if token:
            q["pageToken"] = token
        if self.user_project:
            q["userProject"] = self.user_project
        return f"{self._path}?{urlencode(q, quote_via=quote)}"

    def _page(self, token: str | None, sent: bool = False) -> tuple[dict, str | None]:
        """One page (and the token whose request went out ahead of it, if any), retried within
        the budget; raises GcpdlError subclasses. ``sent``: its request is already on the
        connection (sent ahead), so the first attempt only reads the answer."""
        budget = listing.list_retry_budget()
        start = time.monotonic()
        target = self._target(token)
        force_auth = False
        attempt = 0
        while True:
            try:
                if not sent:
                    self._send(target, force_auth)
                sent = False
                return self._receive()
            except _Retry as r:
                force_auth = r.status == 401
                attempt += 1
                delay = backoff(attempt - 1, base=listing.LIST_BACKOFF_BASE, cap=32.0)
                # like the library: another attempt only while the budget lasts, but never fewer
                # than LIST_ATTEMPTS, however long each took
                if attempt >= listing.LIST_ATTEMPTS and time.monotonic() - start + delay > budget:
                    raise self._give_up(r) from None
                self.sleep(delay)

    def _give_up(self, r: _Retry) -> Exception:
        if r.status is not None:
            return listing.map_status(r.status, r.message, self.bucket, self.identity, self.user_project)
        return SyncError(
            f"Cannot list gs://{self.bucket} at {self.base_url}: {r}.",
            fix="Check the network, and GCPDL_STORAGE_ENDPOINT / STORAGE_EMULATOR_HOST if set.",
        )

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            connect, _ = listing.PAGE_TIMEOUT
            ep = self.endpoint
            if ep.scheme == "https":
                self._conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=connect, context=_tls_context())
            else:
                self._conn = http.client.HTTPConnection(ep.host, ep.port, timeout=connect)
        return self._conn

    def _send(self, target: str, force_auth: bool) -> None:
        headers = {"Accept-Encoding": "identity"}
        token = bearer_token(self.credentials, force_auth)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = self._connection()
        try:
            if conn.sock is None:
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(listing.PAGE_TIMEOUT[1])  # no byte for this long: try again
            self.requests += 1
            conn.request("GET", target, headers=headers)
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out
            self.close()
            raise _Retry(_reason(e)) from None

    def _receive(self) -> tuple[dict, str | None]:
        """The answer to the request on the connection. Pages come one after another (each
        needs the last one's token), so before the page is parsed its token is picked out of
        the raw bytes and the next request sent: the server works on it while this page is
        parsed and planned (the JSON parse decides; a token that differs drops the connection)."""
        conn = self._connection()
        try:
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:  # reset, timed out, garbled
            self.close()
            raise _Retry(_reason(e)) from None
        ahead = None
        if resp.will_close:
            self.close()
        elif resp.status == 200:
            found = _TOKEN.findall(data)
            if len(found) == 1:
                ahead = found[0].decode("ascii", "replace")
                try:
                    self._send(self._target(ahead), False)
                except _Retry:  # the next page's own attempt says what is wrong
                    ahead = None
        status = resp.status
        if status == 200:
            try:
                return json.loads(data), ahead
            except ValueError:
                self.close()
                raise _Retry("a listing page that is not JSON") from None
        message = _error_message(data, resp.reason)
        if status in RETRY_STATUSES or status == 401:
            raise _Retry(f"HTTP {status}", status, message)
        raise listing.map_status(status, message, self.bucket, self.identity, self.user_project)


def _reason(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer within {listing.PAGE_TIMEOUT[1]:g}s"
    return type(e).__name__


def _error_message(data: bytes, reason: str) -> str:
    """The JSON API's error message ({"error": {"message": ...}}), else the body's first line."""
    try:
        err = json.loads(data).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (ValueError, AttributeError):
        pass
    text = data[:2000].decode("utf-8", "replace").strip()
    return text or reason
