"""Parse ``gs://BUCKET[/PREFIX]`` URLs, and the https forms people copy from a browser;
validation needs no network.

Accepted, all meaning gs://BUCKET/PATH:
  https://storage.googleapis.com/BUCKET/PATH          (public/API link)
  https://storage.cloud.google.com/BUCKET/PATH        (authenticated browser link)
  https://console.cloud.google.com/storage/browser/BUCKET/PATH[?project=...]
  https://console.cloud.google.com/storage/browser/_details/BUCKET/PATH   (an object's page)
Whether PATH is a folder or one object is decided by the listing (gcpdl.sync.listing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from gcpdl.errors import InvalidInput

# Bucket naming rules: 3-63 chars per dot-separated part (up to 222 total), lowercase letters,
# digits, dashes, underscores and dots, starting and ending with a letter or digit.
# https://cloud.google.com/storage/docs/buckets#naming
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


_STORAGE_HOSTS = ("storage.googleapis.com", "storage.cloud.google.com")
_CONSOLE_HOST = "console.cloud.google.com"
_CONSOLE_PATH = "/storage/browser/"
_CONSOLE_PARAM_RE = re.compile(r";[A-Za-z_]+=[^/;]*")
FORMS = "Use gs://BUCKET/PATH, https://storage.googleapis.com/BUCKET/PATH or a Cloud Console bucket link."


@dataclass(frozen=True)
class GcsUrl:
    bucket: str
    prefix: str  # "" for the whole bucket, else ends with "/" (a PREFIX is treated as a folder)
    object: str | None = None  # set by the listing when the URL names one object (prefix: its folder)

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.object if self.object is not None else self.prefix}"

    @property
    def leaf(self) -> str:
        """The last name in the URL (train.zip for gs://b/data/train.zip), "" for a bucket."""
        return (self.object or self.prefix).rstrip("/").rsplit("/", 1)[-1]


def _from_https(url: str) -> str:
    """gs://BUCKET/PATH for a storage or Cloud Console https URL; ``url`` unchanged otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    path = parts.path
    if host in _STORAGE_HOSTS:
        rest = path.lstrip("/")
    elif host == _CONSOLE_HOST and path.startswith(_CONSOLE_PATH):
        rest = path[len(_CONSOLE_PATH) :]
        if rest.startswith("_details/"):
            rest = rest[len("_details/") :]
        # the console appends matrix parameters (";tab=objects", ";tab=live_object") to the path
        rest = _CONSOLE_PARAM_RE.sub("", rest)
        bucket, sep, tail = rest.partition("/")
        prefix = (parse_qs(parts.query).get("prefix") or [""])[0]
        if prefix and not tail:
            rest = rest.rstrip("/") + "/" + prefix
    else:
        raise InvalidInput(f"'{url}' is not a Cloud Storage link. {FORMS}")
    return "gs://" + unquote(rest)


def parse_gs_url(url: str) -> GcsUrl:
    if url.startswith(("https://", "http://")):
        url = _from_https(url)
    if not url.startswith("gs://"):
        raise InvalidInput(f"'{url}' is not a gs:// URL. {FORMS}")
    rest = url[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidInput(f"'{url}' names no bucket. Use gs://BUCKET or gs://BUCKET/PREFIX.")
    if not _BUCKET_RE.match(bucket) or ".." in bucket or any(len(p) > 63 for p in bucket.split(".")):
        raise InvalidInput(f"'{bucket}' is not a valid bucket name (lowercase letters, digits, '-', '_' and '.').")
    if "\x00" in prefix or "\n" in prefix or "\r" in prefix:
        raise InvalidInput(f"The prefix in '{url}' contains a control character.")
    if len(prefix.encode()) > 1024:
        raise InvalidInput("The prefix is longer than the 1024-byte limit on object names.")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return GcsUrl(bucket=bucket, prefix=prefix)
