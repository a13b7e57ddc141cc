"""`gcpdl doctor --fix`: do, with the user's yes, what Google's APIs allow a program to do.

- enable compute.googleapis.com through the Service Usage API (and wait for its operation);
- with no project set, offer the only project the account sees (Resource Manager's list, as
  `gcloud projects list`), or name the ones it sees; keep a project given only as a flag;
- choose a zone that offers the GPU at the lowest price (gcpdl.pricing) and keep it in the config.

What no API can do for a learner (link billing, grant GPU quota) stays a link in doctor's
checks (gcpdl.compute.errors.quota_fix). Nothing here prints: each step is described first (for
the prompt), then applied; the CLI asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gcpdl.clients import ADC_FIX, ClientFactory
from gcpdl.deadline import Deadline
from gcpdl.errors import CredentialsError, GcpdlError, NotFound, PermissionDenied

COMPUTE_SERVICE = "compute.googleapis.com"
ENABLE_TIMEOUT = 300.0  # enabling Compute usually takes 30-90 s; Google's own CLI waits minutes
READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class Step:
    """One repair: ``question`` is what the user is asked; ``apply`` does it and returns what
    was done, in words."""

    key: str  # "compute api", "project", "zone"
    question: str
    apply: Callable[[], str]


@dataclass(frozen=True)
class ZoneChoice:
    zone: str
    price_per_hour: float
    gpu: str


# --- Service Usage -------------------------------------------------------------------------
def _request(factory: ClientFactory, method: str, path: str, deadline: Deadline, what: str, root: str | None = None) -> dict[str, Any]:
    """One call to Service Usage (or, with ``root``, another API's REST root) through the
    factory's authorized session; errors mapped to gcpdl errors."""
    import requests
    from google.auth import exceptions as gexc

    root = root or factory.serviceusage_endpoint
    try:
        resp = factory.session.request(method, f"{root}/v1/{path}", timeout=max(1.0, min(READ_TIMEOUT, deadline.remaining())))
    except (requests.RequestException, gexc.GoogleAuthError) as e:
        raise GcpdlError(
            f"Cannot reach {root} ({type(e).__name__}).",
            fix="Check your network (or the GCPDL_..._ENDPOINT you set) and run gcpdl doctor --fix again.",
        ) from None
    if resp.status_code < 400:
        return resp.json() if resp.content else {}
    try:
        err = resp.json().get("error") or {}
    except ValueError:
        err = {"message": resp.text[:200]}
    message = str(err.get("message") or f"HTTP {resp.status_code}")
    project = factory.settings.project
    if resp.status_code == 401:
        raise CredentialsError("Google rejected the credentials (expired or revoked).", fix=ADC_FIX)
    if resp.status_code == 404:
        raise NotFound(f"Project {project} not found.", fix="Check the project id (gcloud projects list) or pass --project.")
    if resp.status_code == 403:
        raise PermissionDenied(
            f"Google refused to {what}: {message}",
            fix=(f"Ask a project owner for roles/serviceusage.serviceUsageAdmin, or enable it yourself: "
                 f"gcloud auth login, then gcloud services enable {COMPUTE_SERVICE} --project {project}"),
        )
    raise GcpdlError(f"Could not {what}: {message}")


def enable_service(factory: ClientFactory, project: str, service: str, deadline: Deadline) -> None:
    """POST services/SERVICE:enable, then follow its long-running operation to done."""
    what = f"enable {service} in project {project}"
    op = _request(factory, "POST", f"projects/{project}/services/{service}:enable", deadline, what)
    poll = max(0.01, float(factory.settings.poll_interval))
    while not op.get("done"):
        if deadline.expired():
            raise GcpdlError(
                f"Enabling {service} in project {project} did not finish within {deadline.seconds:g}s.",
                fix="It may still finish: run gcpdl doctor again in a minute.",
            )
        deadline.pause(min(poll, deadline.remaining()))
        op = _request(factory, "GET", str(op["name"]), deadline, what)
    if op.get("error"):
        raise GcpdlError(f"Could not {what}: {op['error'].get('message', 'the operation failed')}")


# --- the projects the account can see (what `gcloud projects list` shows) -------------------
def list_projects(factory: ClientFactory, deadline: Deadline) -> list[tuple[str, str]]:
    """(project id, display name) of every ACTIVE project the credentials can see."""
    out: list[tuple[str, str]] = []
    path = "projects?filter=lifecycleState%3AACTIVE&pageSize=100"
    while True:
        page = _request(factory, "GET", path, deadline, "list your projects", root=factory.resourcemanager_endpoint)
        out += [(p["projectId"], p.get("name") or p["projectId"]) for p in page.get("projects") or [] if p.get("projectId")]
        token = page.get("nextPageToken")
        if not token or len(out) >= 1000:
            return sorted(out)
        path = f"projects?filter=lifecycleState%3AACTIVE&pageSize=100&pageToken={token}"


def project_step(factory: ClientFactory, profile: str = "default") -> tuple[Step | None, str | None]:
    """No project set: the only project the account sees becomes a step; several become advice
    (which ids exist, and the command that picks one); none, advice to create one."""
    from gcpdl import settings as settings_mod

    try:
        projects = list_projects(factory, Deadline(READ_TIMEOUT, "your project list"))
    except GcpdlError as e:
        return None, f"Could not list your projects ({e.message}); see them with: gcloud projects list"
    if not projects:
        return None, "Your account sees no project: create one at https://console.cloud.google.com/projectcreate"
    if len(projects) > 1:
        shown = ", ".join(pid for pid, _ in projects[:10]) + (", ..." if len(projects) > 10 else "")
        return None, f"Your projects: {shown}. Pick one: gcpdl config set project PROJECT_ID"
    pid, name = projects[0]

    def keep() -> str:
        path = settings_mod.write_config_value("project", pid, profile)
        factory.settings.project = pid
        factory.settings.sources["project"] = "config"
        return f"Saved project = {pid} in {path}."

    label = f"{pid} ({name})" if name != pid else pid
    return Step("project", f"Use project {label}, the only one your account sees, and save it in gcpdl's config?", keep), None


# --- the cheapest zone for a GPU -----------------------------------------------------------
def cheapest_zone(compute: Any, gpu: str, spot: bool, deadline: Deadline) -> ZoneChoice:
    """The zone that offers ``gpu`` (one aggregated acceleratorTypes list) at the lowest price
    of its default machine. Ties go to the region with the most zones offering it (more room to
    fail over on a stockout), then to listed (not estimated) prices, then by name."""
    from gcpdl.compute.zones import accelerator_zones
    from gcpdl.pricing import hourly_price, region_of
    from gcpdl.spec import GPUS

    entry = GPUS[gpu]
    offered = accelerator_zones(compute, entry.accelerator, deadline)
    if not offered:
        raise NotFound(f"No zone offers {entry.accelerator} to project {compute.project}.")
    per_region: dict[str, int] = {}
    for zone in offered:
        per_region[region_of(zone)] = per_region.get(region_of(zone), 0) + 1
    machine = entry.machines[min(entry.machines)]

    def rank(zone: str) -> tuple:
        price = hourly_price(machine, gpu, min(entry.machines), region_of(zone), spot)
        return (round(price.total, 4), price.estimated, -per_region[region_of(zone)], zone)

    best = min(offered, key=rank)
    return ZoneChoice(best, rank(best)[0], gpu)


# --- the plan ------------------------------------------------------------------------------
def plan(factory: ClientFactory, checks: list[Any], gpu: str | None, spot: bool, profile: str = "default") -> list[Step]:
    """The repairs for what ``checks`` (gcpdl.compute.doctor.run_checks) found, in order.
    Steps that need Compute (the zone) are planned only once Compute answers."""
    from gcpdl import settings as settings_mod

    failed = {c.name: c for c in checks if not c.ok}
    names = {c.name for c in checks}
    steps: list[Step] = []
    settings = factory.settings
    project = settings.project
    if "compute api" in failed and "not enabled" in failed["compute api"].detail and project:
        def enable() -> str:
            enable_service(factory, project, COMPUTE_SERVICE, Deadline(ENABLE_TIMEOUT, f"{COMPUTE_SERVICE} to be enabled"))
            return f"Enabled {COMPUTE_SERVICE} in project {project}."

        steps.append(Step("compute api", f"Enable {COMPUTE_SERVICE} in project {project} (free; takes about a minute)?", enable))
    if project and "project" in names and "project" not in failed and settings.sources.get("project") in ("flag", "adc"):
        def keep_project() -> str:
            path = settings_mod.write_config_value("project", project, profile)
            return f"Saved project = {project} in {path}."

        steps.append(Step("project", f"Save project {project} in gcpdl's config, so you need not pass it again?", keep_project))
    return steps


def zone_step(factory: ClientFactory, compute: Any, gpu: str, spot: bool, profile: str = "default") -> Step | None:
    """Keep the cheapest zone for ``gpu`` in the config when no zone is set, or the one set does
    not offer the GPU."""
    from gcpdl import settings as settings_mod
    from gcpdl.compute.zones import accelerator_zones
    from gcpdl.spec import GPUS

    deadline = Deadline(READ_TIMEOUT * 2, "the zones that offer the GPU")
    current = factory.settings.zone
    if current and current in accelerator_zones(compute, GPUS[gpu].accelerator, deadline):
        return None
    choice = cheapest_zone(compute, gpu, spot, deadline)
    why = "no zone is set" if not current else f"{current} does not offer {gpu}"
    label = GPUS[gpu].label or gpu

    def keep_zone() -> str:
        path = settings_mod.write_config_value("zone", choice.zone, profile)
        return f"Saved zone = {choice.zone} in {path}."

    return Step("zone", f"Use zone {choice.zone}, the cheapest that offers {label} (${choice.price_per_hour:.2f}/h; {why})?", keep_zone)
