"""What a bucket listing yields, how long a page may take, and what its errors say.

The listing itself is gcpdl.sync.rawlist (raw HTTP/JSON, no google-cloud-storage import before
the first request); each page's JSON items become small records rather than library Blobs
(~1.7 KB each): memory grows by one small tuple per object in flight, and nothing else.
"""

from __future__ import annotations

from typing import NamedTuple

from gcpdl.errors import GcpdlError, InvalidInput, NotFound, PermissionDenied, SyncError

PAGE_SIZE = 1000  # the API's maximum
LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash),nextPageToken"
VIEWER_ROLE = "roles/storage.objectViewer"
PAGE_TIMEOUT = (10.0, 20.0)  # connect, read (no byte for this long): seconds for one attempt at a page
LIST_ATTEMPTS = 2  # full attempts a page always gets, however long each one takes
LIST_BACKOFF_BASE = 1.0  # seconds before the first retry (doubling), as the library does


def backoff_total(pauses: int, base: float) -> float:
    """The longest time ``pauses`` doubling backoffs from ``base`` can take together."""
    return base * (2**pauses - 1)


def list_retry_budget() -> float:
    """Total time one page may spend in retries (429/5xx/connection errors/timeouts).

    The library checks its retry timeout only before starting another attempt, so a budget
    shorter than one attempt never retries a timed-out one (a stalled page used to end the whole
    sync: a 30 s budget against a 60 s read timeout). Derived from the attempt's timeout, so the
    two cannot drift apart: LIST_ATTEMPTS full attempts and the pauses between them (61 s; a
    dead endpoint, refused at once, is reported within that too).
    """
    return LIST_ATTEMPTS * sum(PAGE_TIMEOUT) + backoff_total(LIST_ATTEMPTS - 1, LIST_BACKOFF_BASE)


class ObjectRecord(NamedTuple):
    name: str
    size: int
    generation: int
    crc32c: int | None  # decoded; None when the server did not report one
    md5: str | None  # base64, only used when there is no crc32c


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0][:200]


def map_status(code: int | None, message: str, bucket: str, identity: str, user_project: str | None) -> GcpdlError:
    """A listing's HTTP status and the API's error message as a one-line error with its fix."""
    low = message.lower()
    who = identity or "the current credentials"
    if code == 404:
        return NotFound(f"Bucket gs://{bucket} does not exist (or is not visible to {who}).")
    if code in (401, 403) or "requester pays" in low or "user project" in low:
        if "requester pays" in low or "user project" in low or "userproject" in low:
            if user_project:
                return PermissionDenied(
                    f"gs://{bucket} is requester-pays and {who} cannot bill project {user_project} for it.",
                    fix="Grant roles/serviceusage.serviceUsageConsumer on that project, or pick another --billing-project.",
                )
            return InvalidInput(
                f"gs://{bucket} is a requester-pays bucket.", fix="Pass --billing-project PROJECT_ID to pay for the reads."
            )
        if identity == "anonymous":
            return PermissionDenied(
                f"Anonymous access to gs://{bucket} is denied; it is not a public bucket.",
                fix="Run: gcloud auth application-default login",
            )
        return PermissionDenied(
            f"Access denied to gs://{bucket} for {who}.",
            fix=f"Grant it {VIEWER_ROLE}: gcloud storage buckets add-iam-policy-binding gs://{bucket} --member=... --role={VIEWER_ROLE}",
        )
    return SyncError(f"Listing gs://{bucket} failed ({code}): {_first_line(message)}")
