"""What a bucket listing yields, how long a page may take, and what its errors say.

The listing itself is gcpdl.sync.rawlist (raw HTTP/JSON, no google-cloud-storage import before
the first request); each page's JSON items become small records rather than library Blobs
(~1.7 KB each): memory grows by one small tuple per object in flight, and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from gcpdl.errors import GcpdlError, InvalidInput, NotFound, PermissionDenied, SyncError

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from gcpdl.sync.url import GcsUrl

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


# --- what a URL names: a folder, one object, or nothing (a typo) --------------------------------
SUGGESTIONS = 3  # close names offered when a URL matches nothing
SUGGEST_CUTOFF = 0.6  # difflib ratio below which a name is not "close"


def open_listing(pages_for: Callable[[str], Iterator[list[ObjectRecord]]], client_for: Callable[[], Any], url: "GcsUrl",
                 user_project: str | None = None) -> tuple["GcsUrl", Iterator[list[ObjectRecord]]]:
    """The listing for ``url``, and ``url`` as resolved. ``pages_for(prefix)`` lists (the raw
    lister); ``client_for()`` gives a google-cloud-storage client, used only to explain a URL that
    matches nothing.

    Objects under PREFIX/: the URL as given, and its pages. None, but an object named PREFIX
    (gs://b/data/train.zip): the URL with ``object`` set and ``prefix`` its folder, so it lands
    in DEST as train.zip. Neither: NotFound, naming the closest folders and objects that exist.
    """
    import itertools

    from gcpdl.sync.url import GcsUrl

    pages = pages_for(url.prefix)
    for page in pages:
        if page:
            return url, itertools.chain([page], pages)
    name = url.prefix.rstrip("/")
    if name:
        # the object itself sorts first among the names it prefixes
        first = next((p for p in pages_for(name) if p), [])
        if first and first[0].name == name:
            folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
            return GcsUrl(url.bucket, folder, object=name), iter([[first[0]]])
    raise no_match(client_for(), url, user_project)


def object_dest(url: "GcsUrl", dest: "Path", delete: bool) -> "Path":
    """The folder a single object lands in: DEST, or DEST's parent when DEST names the file
    itself (gs://b/train.zip to /data/train.zip, the default DEST, gives /data/train.zip)."""
    if delete:
        raise InvalidInput(f"{url} is one object, not a folder: --delete would empty DEST around it.",
                           fix="Drop --delete, or sync the folder that holds it.")
    if dest.name == url.leaf and not dest.is_dir():
        return dest.parent
    return dest


def _children(client: Any, bucket: str, folder: str, user_project: str | None) -> list[str]:
    """Names (sub-folders with a trailing '/') directly under ``folder``: one page at most."""
    it = client.list_blobs(client.bucket(bucket, user_project=user_project), prefix=folder or None, delimiter="/",
                           max_results=PAGE_SIZE, fields="items(name),prefixes,nextPageToken", timeout=PAGE_TIMEOUT)
    page = next(it.pages, None)
    raw = (page.raw_page or {}) if page is not None else {}
    names = [p[len(folder):] for p in raw.get("prefixes") or ()]
    names += [i["name"][len(folder):] for i in raw.get("items") or () if i["name"] != folder]
    return sorted(names)


def no_match(client: Any, url: "GcsUrl", user_project: str | None) -> GcpdlError:
    """The error for a URL that matches nothing, with the closest names that exist: the parent
    folder is listed with delimiter '/' (walking up while it is empty too) and the names nearest
    the one typed are offered."""
    import difflib

    what = f"gs://{url.bucket}/{url.prefix.rstrip('/')}"
    parts = url.prefix.rstrip("/").split("/") if url.prefix else []
    if not parts:
        return NotFound(f"gs://{url.bucket} is empty: there is nothing to sync.")
    names: list[str] = []
    depth = len(parts) - 1
    try:
        while depth >= 0:
            folder = "".join(p + "/" for p in parts[:depth])
            names = _children(client, url.bucket, folder, user_project)
            if names:
                break
            depth -= 1
    except Exception:  # suggestions are a courtesy: the error stands without them
        return NotFound(f"No object or folder matches {what}.")
    if not names:
        return NotFound(f"No object or folder matches {what}: gs://{url.bucket} is empty.")
    typed = parts[depth]
    bare = {n.rstrip("/"): n for n in names}  # sorted: a folder "x/" comes after an object "x", and wins
    close = [bare[n] for n in difflib.get_close_matches(typed, list(bare), n=SUGGESTIONS, cutoff=SUGGEST_CUTOFF)]
    base = f"gs://{url.bucket}/{folder}"
    if close:
        fix = "Did you mean " + " or ".join(base + n for n in close[:SUGGESTIONS]) + "?"
    else:
        fix = f"{base} holds: " + ", ".join(names[:SUGGESTIONS]) + (", ..." if len(names) > SUGGESTIONS else "")
    return NotFound(f"No object or folder matches {what}.", fix=fix)
