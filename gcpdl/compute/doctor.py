"""`gcpdl doctor`: everything `up` needs, checked before anything is created.

Each check says what it found and, when it fails, the exact fix (a command or a console page).
All reads go through the lean REST session: doctor must be quick to run again after a fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gcpdl.clients import ADC_FIX, ClientFactory
from gcpdl.compute.errors import BILLING_PAGE, quota_shortfall
from gcpdl.compute.quota import ALL_REGIONS, limit_usage, regional_metric
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
    checks += network_checks(compute, project, getattr(factory.settings, "network", None), zone, deadline)
    checks += oslogin_checks(factory, info)
    if not gpu:
        return checks
    checks.append(_quota_check(project, ALL_REGIONS, None, info.get("quotas") or []))
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
    quotas = rinfo.get("quotas") or []
    standard = GPUS[gpu].quota_metric
    checks.append(_quota_check(project, standard, region, quotas))
    if spot:
        if regional_metric(gpu, True, quotas) == standard:
            checks.append(Check(f"quota PREEMPTIBLE_{standard}", True, f"limit 0 in {region}: Spot VMs use {standard} instead"))
        else:
            checks.append(_quota_check(project, "PREEMPTIBLE_" + standard, region, quotas))
    return checks


def _quota_check(project: str, metric: str, region: str | None, quotas: list[dict]) -> Check:
    """Room for one more GPU, in `up`'s words when there is none (compute.errors.quota_shortfall)."""
    limit, usage = limit_usage(quotas, metric) or (0.0, 0.0)
    where = f" in {region}" if region else ""
    if usage + 1 <= limit:
        return Check(f"quota {metric}", True, f"limit {limit:g}{where}, in use {usage:g}")
    short = quota_shortfall(project, metric, region, limit, usage, 1)
    return Check(f"quota {metric}", False, short.message, short.fix)


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


def network_checks(compute: Any, project: str, network: str | None, zone: str | None, deadline: Deadline) -> list[Check]:
    """The network `up` would use exists, and which firewall rules let the whole internet reach
    gcpdl's VMs (existing ones, and new ones in that network). A rule that opens SSH past
    gcpdl's deny rule fails the check; one whose other ports stay open is reported with how to
    delete it; the default network's default-allow-ssh is shown as shut by the deny rule."""
    from concurrent.futures import ThreadPoolExecutor

    from gcpdl.compute import firewall as fw
    from gcpdl.compute import network as nw
    from gcpdl.compute.lifecycle import list_managed

    name = network or "default"
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="gcpdl-doctor") as pool:
        f_net = pool.submit(compute.get_or_none, nw.network_path(project, name), deadline)
        f_rules = pool.submit(fw.list_rules, compute, deadline)
        f_vms = pool.submit(list_managed, compute, deadline)
        try:
            doc, rules, vms = f_net.result(), f_rules.result(), f_vms.result()
        except GcpdlError as e:
            return [Check("firewall", False, e.message, e.fix)]
    out = []
    try:
        # with a zone, also whether a VM there gets a subnet; without one, only that it exists
        choice = nw.choose(project, name, None, doc, zone, name != "default") if zone or doc is None else None
        mode = "auto mode" if (choice.auto if choice else (doc or {}).get("autoCreateSubnetworks")) else "custom mode"
        out.append(Check(f"network {name}", True, f"exists ({mode})"))
    except GcpdlError as e:
        out.append(Check(f"network {name}", False, e.message, e.fix))
    found = fw.world_open_rules(rules, [(v.name, v.network, v.tags) for v in vms], new_vms_network=name)
    for rule in found:
        fix = f"gcloud compute firewall-rules delete {rule.rule}" if rule.ssh_open and rule.outranks_deny else None
        if rule.ssh_open and not rule.outranks_deny:
            fix = f"gcpdl start {rule.missing_deny[0]}"
        out.append(Check(f"firewall {rule.rule}", not rule.ssh_open, rule.message(), fix))
    if not found:
        out.append(Check("firewall", True, "no rule opens gcpdl's VMs to the whole internet"))
    return out


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
