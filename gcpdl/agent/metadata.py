"""The GCE metadata server, as the agent needs it (stdlib only).

Reads the ``gcpdl-autostop`` instance attribute, long-polls the attributes for a change (so
``gcpdl autostop NAME 30m`` takes effect at once, not at the next tick) and writes the reason
for a stop to the guest attribute ``gcpdl/autostop``, which ``gcpdl status`` reads.
https://cloud.google.com/compute/docs/metadata/querying-metadata#waitforchange
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_HOST = "metadata.google.internal"
ATTRIBUTE = "gcpdl-autostop"
GUEST_NAMESPACE, GUEST_KEY = "gcpdl", "autostop"
TIMEOUT = 5.0


class Metadata:
    def __init__(self, host: str | None = None, timeout: float = TIMEOUT):
        # GCE_METADATA_HOST is the variable google-auth honours for the same purpose.
        self.host = host or os.environ.get("GCE_METADATA_HOST") or DEFAULT_HOST
        self.timeout = timeout

    def _url(self, path: str, query: dict | None = None) -> str:
        base = self.host if "://" in self.host else f"http://{self.host}"
        url = f"{base}/computeMetadata/v1/{path}"
        return url + ("?" + urllib.parse.urlencode(query) if query else "")

    def _request(self, path: str, query: dict | None = None, method: str = "GET", body: bytes | None = None, timeout: float | None = None):
        req = urllib.request.Request(self._url(path, query), data=body, method=method, headers={"Metadata-Flavor": "Google"})
        return urllib.request.urlopen(req, timeout=timeout or self.timeout)

    def autostop_value(self) -> str | None:
        """The raw attribute, None when it is not set. Raises OSError when the server is
        unreachable (the caller counts that as unknown)."""
        try:
            with self._request(f"instance/attributes/{ATTRIBUTE}") as r:
                if r.headers.get("Metadata-Flavor") != "Google":
                    raise OSError("response without Metadata-Flavor: Google")
                return r.read().decode().strip()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def attribute(self, key: str) -> str | None:
        """Any instance attribute (None when unset); OSError when the server is unreachable."""
        try:
            with self._request(f"instance/attributes/{key}") as r:
                return r.read().decode().strip()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def etag(self) -> str | None:
        """The attributes' current ETag, to wait for a change from."""
        with self._request("instance/attributes/", {"recursive": "true"}) as r:
            r.read()
            return r.headers.get("ETag")

    def wait_for_change(self, etag: str | None, timeout_s: float) -> str | None:
        """Block until the instance attributes change or ``timeout_s`` passes; return the new
        ETag. Watches the whole directory because waiting on a key that does not exist yet
        returns 404 at once."""
        query = {"recursive": "true", "wait_for_change": "true", "timeout_sec": str(max(1, int(timeout_s)))}
        if etag:
            query["last_etag"] = etag
        with self._request("instance/attributes/", query, timeout=timeout_s + self.timeout) as r:
            r.read()
            return r.headers.get("ETag")

    def record_stop(self, reason: str) -> None:
        with self._request(f"instance/guest-attributes/{GUEST_NAMESPACE}/{GUEST_KEY}", method="PUT", body=reason.encode()) as r:
            r.read()
