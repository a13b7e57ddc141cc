"""Turn Compute API errors into gcpdl errors a learner understands.

Errors reach us in three shapes: google.api_core exceptions (compute_v1 calls), raw REST error
bodies (reads through the lean session) and a finished operation's ``error.errors[]``. All three
are first normalised to ``ApiError``, then classified once here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gcpdl.errors import (
    ApiDisabled,
    Conflict,
    CredentialsError,
    GcpdlError,
    InvalidInput,
    NotFound,
    OperationFailed,
    PermissionDenied,
    QuotaExceeded,
    Stockout,
)

QUOTA_PAGE = "https://console.cloud.google.com/iam-admin/quotas?project={project}"
BILLING_PAGE = "https://console.cloud.google.com/billing/linkedaccount?project={project}"
STOCKOUT_CODES = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_POOL_EXHAUSTED"}
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


@dataclass
class ApiError:
    status: int | None  # HTTP status; None for an operation error without httpErrorStatusCode
    code: str  # operation error code or the first reason ("quotaExceeded", "notFound", ...)
    message: str
    reasons: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo metadata, quotaInfo

    @property
    def is_stockout(self) -> bool:
        if self.code in STOCKOUT_CODES or any(r in STOCKOUT_CODES for r in self.reasons):
            return True
        # A synchronous 503 on insert means the zone cannot take the request right now.
        return self.status == 503 and (
            "resourceUnavailable" in self.reasons or "does not have enough resources" in self.message
        )

    @property
    def is_quota(self) -> bool:
        return self.code in ("QUOTA_EXCEEDED", "quotaExceeded") or "quotaExceeded" in self.reasons or "QUOTA_EXCEEDED" in self.reasons

    @property
    def quota_metric(self) -> str | None:
        metric = self.metadata.get("quota_metric") or self.metadata.get("metricName") or self.metadata.get("quotaMetric")
        if metric:
            metric = metric.rsplit("/", 1)[-1].upper()
            return metric
        m = re.search(r"Quota '([A-Z0-9_]+)' exceeded", self.message)
        return m.group(1) if m else None

    @property
    def quota_region(self) -> str | None:
        region = self.metadata.get("region")
        if region:
            return region
        m = re.search(r"in region ([a-z0-9-]+)", self.message)
        return m.group(1) if m else None

    @property
    def zones_available(self) -> list[str]:
        raw = self.metadata.get("zonesAvailable") or self.metadata.get("zones_available") or ""
        return [z.strip().rsplit("/", 1)[-1] for z in raw.split(",") if z.strip()]

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUS and not self.is_stockout and not self.is_quota


def _merge_details(details: Any, metadata: dict[str, str], reasons: list[str]) -> None:
    for d in details or []:
        if not isinstance(d, dict):
            continue
        info = d.get("errorInfo") or (d if "reason" in d and "metadata" in d else None)
        if info:
            if info.get("reason"):
                reasons.append(info["reason"])
            # operations spell it "metadatas" (sic), REST ErrorInfo "metadata"
            meta = info.get("metadata") or info.get("metadatas") or {}
            metadata.update({k: str(v) for k, v in meta.items()})
        quota = d.get("quotaInfo")
        if quota:
            metadata.update({k: str(v) for k, v in quota.items() if not isinstance(v, dict)})
            metadata.update({k: str(v) for k, v in (quota.get("dimensions") or {}).items()})


def from_rest(status: int, payload: Any) -> ApiError:
    """A REST error body: {"error": {"code", "message", "errors": [...], "details": [...]}}."""
    err = payload.get("error", {}) if isinstance(payload, dict) else {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    reasons = [e.get("reason", "") for e in err.get("errors") or [] if isinstance(e, dict)]
    metadata: dict[str, str] = {}
    _merge_details(err.get("details"), metadata, reasons)
    reasons = [r for r in reasons if r]
    return ApiError(status, reasons[0] if reasons else str(err.get("status", "")), err.get("message") or f"HTTP {status}", reasons, metadata)


def from_exception(exc: Any) -> ApiError:
    """A google.api_core GoogleAPICallError (what compute_v1 raises)."""
    status = getattr(exc, "code", None)
    status = int(status) if isinstance(status, int) else None
    reasons: list[str] = []
    metadata: dict[str, str] = {}
    for e in getattr(exc, "errors", None) or []:
        if isinstance(e, dict) and e.get("reason"):
            reasons.append(e["reason"])
    _merge_details(getattr(exc, "details", None), metadata, reasons)
    if getattr(exc, "reason", None):
        reasons.append(exc.reason)
        metadata.update({k: str(v) for k, v in (getattr(exc, "metadata", None) or {}).items()})
    message = getattr(exc, "message", None) or str(exc)
    # api_core prefixes "POST http://host/path?requestId=...: "; the user needs only the reason
    message = re.sub(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ", "", message)
    return ApiError(status, reasons[0] if reasons else "", message, reasons, metadata)


def from_operation(op: dict[str, Any]) -> ApiError:
    """A DONE operation (REST JSON) whose ``error.errors[]`` is set."""
    errors = (op.get("error") or {}).get("errors") or [{}]
    first = errors[0]
    metadata: dict[str, str] = {}
    reasons = [e.get("code", "") for e in errors if e.get("code")]
    for e in errors:
        _merge_details(e.get("errorDetails"), metadata, reasons)
    status = op.get("httpErrorStatusCode")
    return ApiError(int(status) if status else None, first.get("code", "UNKNOWN"), first.get("message", "operation failed"), reasons, metadata)


def permission_from(message: str) -> str | None:
    m = re.search(r"'((?:compute|iam|serviceusage|resourcemanager)\.[A-Za-z.]+)'", message)
    if m:
        return m.group(1)
    m = re.search(r"\b(compute\.[a-zA-Z]+\.[a-zA-Z]+)\b", message)
    return m.group(1) if m else None


def to_gcpdl(err: ApiError, project: str, what: str = "") -> GcpdlError:
    """The one classification. ``what`` names the resource for not-found/conflict messages."""
    text = err.message
    reasons = set(err.reasons) | {err.code}
    if err.status == 401 or "UNAUTHENTICATED" in reasons:
        return CredentialsError("Google rejected the credentials (expired or revoked).", fix="Run: gcloud auth application-default login")
    # billing comes with reason accessNotConfigured too: check it before the disabled API
    if reasons & {"BILLING_DISABLED", "billingNotEnabled", "billingDisabled"} or "billing" in text.lower() and err.status == 403:
        return GcpdlError(f"Billing is not enabled for project {project}.", fix=f"Link a billing account: {BILLING_PAGE.format(project=project)}")
    if reasons & {"accessNotConfigured", "SERVICE_DISABLED"} or "has not been used in project" in text or "API has not been" in text:
        service = err.metadata.get("service", "compute.googleapis.com")
        return ApiDisabled(
            f"The Compute Engine API ({service}) is not enabled in project {project}.",
            fix=f"Run: gcloud services enable {service} --project {project}",
        )
    if err.is_quota:
        return quota_error(err, project)
    if err.is_stockout:
        return Stockout(f"No capacity: {text}")
    if err.status == 404 or "notFound" in reasons or "RESOURCE_NOT_FOUND" in reasons:
        if re.search(rf"'projects/{re.escape(project)}' was not found", text) or "project" in reasons or f"Project {project}" in text:
            return NotFound(f"Project {project} not found.", fix="Check the project id (gcloud projects list) or pass --project.")
        m = re.search(r"The resource '([^']+)' was not found", text)
        missing = m.group(1) if m else None
        if missing and missing.endswith("/global/networks/default"):
            # gcpdl puts VMs and the SSH rule on the default VPC; some projects delete it
            return NotFound(
                f"Project {project} has no 'default' VPC network.",
                fix=f"Create it with: gcloud compute networks create default --subnet-mode=auto --project {project}",
            )
        if what and (missing is None or missing.rsplit("/", 1)[-1] in what):
            return NotFound(f"{what} not found.")
        return NotFound(f"Not found: {missing}." if missing else f"Not found: {text}")
    if err.status == 403 or "forbidden" in reasons or "PERMISSION_DENIED" in reasons:
        perm = permission_from(text)
        if perm:
            return PermissionDenied(
                f"Permission denied: you lack {perm} in project {project}.",
                fix="Ask a project owner for a role that includes it (e.g. roles/compute.instanceAdmin.v1).",
            )
        return PermissionDenied(f"Permission denied in project {project}: {text}")
    if err.status == 409 or "alreadyExists" in reasons or "RESOURCE_ALREADY_EXISTS" in reasons:
        return Conflict(f"{what or 'Resource'} already exists." if what else f"Conflict: {text}")
    if err.status == 400 or "invalid" in reasons or "badRequest" in reasons:
        if "disk size" in text.lower() and "image" in text.lower():
            return InvalidInput(f"The boot disk is smaller than the image: {text}")
        return InvalidInput(f"Compute Engine refused the request: {text}")
    return OperationFailed(f"Compute Engine error{f' ({err.code})' if err.code else ''}: {text}", code=err.code or None)


def quota_error(err: ApiError, project: str) -> QuotaExceeded:
    """A quota error the API returned (the pre-flight check could not see it coming: quota used
    up between the read and the insert, or a quota gcpdl does not read)."""
    metric = err.quota_metric or "a quota"
    region = err.quota_region
    where = f"in region {region}" if region else "for the project (all regions)"
    exc = QuotaExceeded(f"Quota {metric} exceeded {where}.", fix=quota_fix(project, metric, region))
    exc.metric = metric  # type: ignore[attr-defined]
    exc.region = region  # type: ignore[attr-defined]
    exc.global_quota = metric.endswith("ALL_REGIONS") or region is None  # type: ignore[attr-defined]
    return exc


def quota_page(project: str, metric: str | None = None) -> str:
    """The console's quota page for the project, filtered to one metric when known."""
    page = QUOTA_PAGE.format(project=project)
    if metric and re.fullmatch(r"[A-Z0-9_]+", metric):
        page += f"&metric=compute.googleapis.com/{metric.lower()}"
    return page


def quota_fix(project: str, metric: str, region: str | None = None, at_least: float | None = None) -> str:
    """What to do about a quota, the same words in `doctor`, `up`'s pre-flight and an API error."""
    want = f" >= {at_least:g}" if at_least is not None else ""
    where = f" in {region}" if region else ""
    fix = f"Request {metric}{want}{where} at {quota_page(project, metric)} (approval usually takes from a few hours to 2 business days"
    if "GPU" in metric:
        fix += "; free-trial accounts must upgrade to a paid account before any GPU quota is granted"
    return fix + ")."


def quota_shortfall(project: str, metric: str, region: str | None, limit: float, usage: float, need: int) -> QuotaExceeded:
    """Not enough quota to add ``need`` more (usage + need > limit): the message and fix that
    `doctor` prints as a failed check and `up` raises before it creates anything."""
    where = f"in {region}" if region else "(all regions)"
    if limit <= 0:
        message = f"Quota {metric} {where} is 0, so no VM with this GPU can be created."
    else:
        message = f"Quota {metric} {where} is {limit:g} with {usage:g} in use: no room for {need} more."
    exc = QuotaExceeded(message, fix=quota_fix(project, metric, region, usage + need))
    exc.metric, exc.region = metric, region  # type: ignore[attr-defined]
    exc.global_quota = region is None  # type: ignore[attr-defined]
    return exc
