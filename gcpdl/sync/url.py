"""Parse ``gs://BUCKET[/PREFIX]`` URLs; validation needs no network."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gcpdl.errors import InvalidInput

# Bucket naming rules: 3-63 chars per dot-separated part (up to 222 total), lowercase letters,
# digits, dashes, underscores and dots, starting and ending with a letter or digit.
# https://cloud.google.com/storage/docs/buckets#naming
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True)
class GcsUrl:
    bucket: str
    prefix: str  # "" for the whole bucket, else ends with "/" (a PREFIX is treated as a folder)

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"


def parse_gs_url(url: str) -> GcsUrl:
    if not url.startswith("gs://"):
        raise InvalidInput(f"'{url}' is not a gs:// URL. Use gs://BUCKET or gs://BUCKET/PREFIX.")
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
