"""What the fake Compute Engine's modules share: the real API's link and time formats, its error
shapes, request/operation records, and the input rules several resources apply (names, labels,
metadata)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_discovery import Route

try:
    from zoneinfo import ZoneInfo

    _PACIFIC: Any = ZoneInfo("America/Los_Angeles")
except Exception:  # pragma: no cover - no tzdata: fall back to a fixed offset
    _PACIFIC = timezone(timedelta(hours=-8))


LINK = "https://www.googleapis.com/compute/v1/"


NAME_RE = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"


ACTIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "REPAIRING")


HTTP_REASONS = {400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 409: "CONFLICT", 429: "TOO MANY REQUESTS",
                500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}


RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
              503: "UNAVAILABLE"}


def rfc3339(dt: datetime) -> str:
    """The real API's format: '2026-11-25T05:41:55.123-08:00'."""
    return dt.astimezone(_PACIFIC).isoformat(timespec="milliseconds")


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str = "invalid", domain: str = "global",
                 details: list | None = None, status: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.body: dict = {"error": {"code": code, "message": message,
                                     "errors": [{"message": message, "domain": domain, "reason": reason, **(extra or {})}]}}
        if status:
            self.body["error"]["status"] = status
        if details:
            self.body["error"]["details"] = details


def invalid_field(field_path: str, value: Any, why: str) -> ApiError:
    return ApiError(400, f"Invalid value for field '{field_path}': '{value}'. {why}")


def not_found(resource_path: str) -> ApiError:
    return ApiError(404, f"The resource '{resource_path}' was not found", reason="notFound")


@dataclass
class OpError:
    """How an operation ends in error (the body of Operation.error plus the HTTP mapping)."""

    code: str
    message: str
    http_status: int = 400
    details: list = field(default_factory=list)

    def body(self) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.details:
            err["errorDetails"] = self.details
        return {"errors": [err]}


class OpFailure(Exception):
    """Raised inside a mutation to end its operation in error instead of answering 4xx/5xx."""

    def __init__(self, error: OpError):
        super().__init__(error.message)
        self.error = error


@dataclass
class LoggedRequest:
    method: str
    path: str  # e.g. /compute/v1/projects/p/zones/z/instances
    query: dict[str, str]
    body: Any  # parsed JSON body, or None
    method_id: str | None = None  # e.g. compute.instances.insert (None for unknown routes)


@dataclass
class Operation:
    body: dict
    polls_left: int
    scope: tuple[str, str | None]  # ("zones", zone) | ("regions", region) | ("global", None)
    on_done: Callable[[], None] | None = None
    on_progress: Callable[[], None] | None = None
    error: OpError | None = None
    ready_at: float | None = None  # time.monotonic() when DONE, for time-based operations


@dataclass
class Stockout:
    code: str = "ZONE_RESOURCE_POOL_EXHAUSTED"
    zones_available: list[str] | None = None
    sync_503: bool = False
    after: int = 0  # inserts that still succeed before the stockout starts


@dataclass
class FailRule:
    status: int
    times: int
    method: re.Pattern
    path: re.Pattern
    after: bool = False  # process the request, then answer the error (a lost response)


@dataclass
class Ctx:
    route: Route
    project: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any


def all_zones() -> list[str]:
    return [z for zones in cat.REGIONS.values() for z in zones]


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def path_of(link: str) -> str:
    return link.split("/compute/v1/", 1)[-1]


_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")


_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


_METADATA_KEY = re.compile(r"[a-zA-Z0-9-_]{1,128}")


def check_labels(labels: dict | None, field_path: str) -> None:
    for k, v in (labels or {}).items():
        if not _LABEL_KEY.fullmatch(k):
            raise ApiError(400, f"Invalid value for field '{field_path}': ''. Label key '{k}' violates format constraints. The key "
                                "must start with a lowercase character, can only contain lowercase letters, numeric characters, "
                                "underscores and dashes. The key can be at most 63 characters long. International characters are allowed.")
        if not _LABEL_VALUE.fullmatch(str(v)):
            raise ApiError(400, f"Invalid value for field '{field_path}': ''. Label value '{v}' violates format constraints. The value "
                                "can only contain lowercase letters, numeric characters, underscores and dashes. The value can be at "
                                "most 63 characters long. International characters are allowed.")
    if len(labels or {}) > 64:
        raise ApiError(400, f"Invalid value for field '{field_path}': ''. Too many labels (at most 64).")


def check_metadata(metadata: dict | None, field_path: str) -> None:
    items = (metadata or {}).get("items") or []
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(items):
        key = item.get("key") or ""
        if not _METADATA_KEY.fullmatch(key):
            raise invalid_field(f"{field_path}.items[{i}].key", key, f"Must be a match of regex '{_METADATA_KEY.pattern}'")
        if key in seen:
            raise invalid_field(f"{field_path}.items[{i}].key", key, "Duplicate keys are not allowed.")
        seen.add(key)
        total += len(key) + len(item.get("value") or "")
    if total > 512 * 1024:
        raise ApiError(400, f"Invalid value for field '{field_path}': ''. Metadata total size exceeds 512 KB.")


def injected(code: int) -> ApiError:
    text = {429: "Rate Limit Exceeded", 500: "Internal error. Please try again or contact Google Support.",
            502: "Bad Gateway", 503: "The service is currently unavailable.", 504: "Deadline exceeded"}.get(code, f"Injected failure {code}")
    reason = {429: "rateLimitExceeded", 403: "forbidden", 404: "notFound"}.get(code, "backendError")
    return ApiError(code, text, reason=reason, status=RPC_STATUS.get(code))


def html_404(path: str) -> tuple[int, dict, bytes]:
    body = ("<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n"
            f"  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not found on "
            "this server.  <ins>That\u2019s all we know.</ins>\n")
    return 404, {"Content-Type": "text/html; charset=UTF-8"}, body.encode()

