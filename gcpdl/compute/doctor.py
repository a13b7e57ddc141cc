"""`gcpdl doctor`: everything `up` needs, checked before anything is created.

Each check says what it found and, when it fails, the exact fix (a command or a console page).
All reads go through the lean REST session: doctor must be quick to run again after a fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gcpdl.clients import ADC_FIX, ClientFactory
from gcpdl.compute.errors import BILLING_PAGE, QUOTA_PAGE
from gcpdl.deadline import Deadline
from gcpdl.errors import ApiDisabled, ConfigError, CredentialsError, GcpdlError, NotFound, PermissionDenied
from gcpdl.pricing import region_of
from gcpdl.spec import GPUS

DOCTOR_TIMEOUT = 60.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quota(quotas: list[dict], metric: str) -> tuple[float, float] | None:
    for q in quotas or []:
        if q.get("metric") == metric:
            return float(q.get("limit", 0)), float(q.get("usage", 0))
    return None


def run_checks(factory: ClientFactory, gpu: str | None, spot: bool, zone: str | None) -> list[Check]:
    from gcpdl.compute.adapter import Compute

    checks: list[Check] = []
    try:
        factory.credentials()
        checks.append(Check("credentials", True, "Application Default Credentials found"))
    except CredentialsError as e:
        checks.append(Check("credentials", False, e.message, ADC_FIX))
        return checks
    try:
        project = factory.project()
        checks.append(Check("project", True, f"{project} (from {factory.settings.sources.get('project', 'adc')})"))
    except ConfigError as e:
        checks.append(Check("project", False, e.message, e.fix))
        return checks
    compute = Compute(factory, project)
    deadline = Deadline(DOCTOR_TIMEOUT, "doctor's checks")
    try:
        info = compute.get(f"/compute/v1/projects/{project}", deadline)
    except ApiDisabled as e:
        checks.append(Check("compute api", False, e.message, e.fix))
        return checks
    except (NotFound, PermissionDenied, CredentialsError) as e:
        checks.append(Check("compute api", False, e.message, e.fix))
        return checks
    except GcpdlError as e:
        if "billing" in e.message.lower():
            checks.append(Check("compute api", True, "compute.googleapis.com enabled"))
            checks.append(Check("billing", False, e.message, e.fix or f"Link a billing account: {BILLING_PAGE.format(project=project)}"))
            return checks
        raise
    checks.append(Check("compute api", True, "compute.googleapis.com enabled"))
    checks.append(_billing(compute, project, zone, deadline))
    checks += oslogin_checks(factory, info)
    if not gpu:
        return checks
    page = QUOTA_PAGE.format(project=project)
    total = _quota(info.get("quotas") or [], "GPUS_ALL_REGIONS")
    if total is None or total[0] <= 0:
        checks.append(Check("quota GPUS_ALL_REGIONS", False, "limit is 0: no GPU can be created in any region",
                            f"Request GPUS_ALL_REGIONS >= 1 (Filter: 'GPUs (all regions)') at {page}"))
    else:
        checks.append(Check("quota GPUS_ALL_REGIONS", True, f"limit {total[0]:g}, in use {total[1]:g}"))
    if not zone:
        checks.append(Check("zone", False, "no zone set, so the regional GPU quota cannot be checked",
                            "Run: gcpdl config set zone us-central1-a (or pass --zone)"))
        return checks
    region = region_of(zone)
    try:
        rinfo = compute.get(f"/compute/v1/projects/{project}/regions/{region}", deadline, what=f"Region {region}")
    except GcpdlError as e:
        checks.append(Check(f"quota in {region}", False, e.message, e.fix))
        return checks
    metrics = [GPUS[gpu].quota_metric] + (["PREEMPTIBLE_" + GPUS[gpu].quota_metric] if spot else [])
    for metric in metrics:
        q = _quota(rinfo.get("quotas") or [], metric)
        if q is None or q[0] <= 0:
            checks.append(Check(f"quota {metric}", False, f"limit is 0 in {region}",
                                f"Request {metric} >= 1 in {region} at {page}"))
        else:
            checks.append(Check(f"quota {metric}", True, f"limit {q[0]:g} in {region}, in use {q[1]:g}"))
    return checks


def _billing(compute: Any, project: str, zone: str | None, deadline: Deadline) -> Check:
    """Compute Engine answers reads on a project without billing, but refuses anything that
    costs money; a zone read is the cheapest call that reports BILLING_DISABLED."""
    try:
        compute.get(f"/compute/v1/projects/{project}/zones/{zone or 'us-central1-a'}", deadline)
    except GcpdlError as e:
        if "billing" in e.message.lower():
            return Check("billing", False, e.message, e.fix or f"Link a billing account: {BILLING_PAGE.format(project=project)}")
        return Check("billing", False, e.message, e.fix)
    return Check("billing", True, "enabled")


def oslogin_checks(factory: ClientFactory, project_info: dict[str, Any]) -> list[Check]:
    """Is OS Login on (project metadata), and if so: the caller's account and POSIX user, and the
    roles it needs, each missing one with the exact grant command. Reads only: no key import."""
    from gcpdl.oslogin import ROLE_LOGIN, ROLE_SA_USER

    oslogin = factory.oslogin()
    oslogin.remember_project(project_info)
    setting = oslogin.setting({})
    if not setting.enabled:
        return [Check("os login", True, f"{setting.describe()}: gcpdl puts its key in each VM's ssh-keys metadata")]
    try:
        email = oslogin.email()
        user = oslogin.profile().username or "a POSIX user OS Login creates when gcpdl first adds its key"
    except GcpdlError as e:
        return [Check("os login", False, f"{setting.describe()}; {e.message}", e.fix)]
    checks = [Check("os login", True, f"{setting.describe()}: {email} logs in as {user}")]
    try:
        missing = {m.role: m for m in oslogin.missing_roles(None)}
    except GcpdlError as e:
        return checks + [Check("os login roles", False, e.message, e.fix)]
    for role, granted in ((ROLE_LOGIN, f"{email} may log in with OS Login"),
                          (ROLE_SA_USER, f"{email} may act as the VMs' service account")):
        m = missing.get(role)
        checks.append(Check(f"role {role.removeprefix('roles/')}", m is None, granted if m is None else m.why,
                            None if m is None else f"Run: {m.fix}"))
    return checks
