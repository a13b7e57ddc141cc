"""Where a VM's sshd is: one lean REST read (instance + host-key guest attributes).

`gcpdl ssh` and `gcpdl jupyter` must start fast, so this goes through the factory's
AuthorizedSession (google-auth + requests) instead of importing google.cloud.compute_v1, which
costs ~1.5 s. Same endpoint, same credentials: the factory is the only place either comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote

from gcpdl.errors import (
    ApiDisabled,
    CredentialsError,
    GcpdlError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    VmNotRunning,
)
from gcpdl.deadline import Deadline, backoff
from gcpdl.settings import escaped
from gcpdl.ssh.hostkeys import HostKey, HostKeysUnavailable, host_alias, parse_guest_attributes

if TYPE_CHECKING:  # pragma: no cover
    from gcpdl.oslogin import Login

NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # fullmatch: `$` lets "box\n" through
HTTP_TIMEOUT = 30.0  # seconds for one REST read
# Reading the host keys: retried for up to this long (capped by ssh_wait), which exceeds one
# attempt's timeout so a timed-out attempt is retried at least once.
HOSTKEYS_BUDGET = 45.0
HOSTKEYS_RETRY_CAP = 5.0
MIN_ATTEMPT_TIMEOUT = 0.2


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to open a verified SSH connection to one VM."""

    name: str
    zone: str
    instance_id: str
    status: str
    host: str | None  # external IP (networkInterfaces[0].accessConfigs[0].natIP)
    port: int = 22
    user: str = "gcpdl"
    guest_keys: tuple[HostKey, ...] = field(default=())
    oslogin: bool = False  # the user is the caller's OS Login POSIX account
    # the instance's REST JSON, for OS Login's permission checks
    instance: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def alias(self) -> str:
        return host_alias(self.instance_id)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"'{escaped(name)}' is not a valid VM name: use lowercase letters, digits and hyphens, "
            "starting with a letter (at most 63 characters)."
        )
    return name


class _ReadFailed(GcpdlError):
    """A read that may succeed if retried; ``short`` says why in a few words."""

    def __init__(self, message: str, short: str):
        super().__init__(message)
        self.short = short


def _raise_for(resp: Any, what: str) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json().get("error", {})
        message = err.get("message") or resp.text[:200]
        reason = ((err.get("errors") or [{}])[0]).get("reason", "")
    except ValueError:
        message, reason = resp.text[:200], ""
    if resp.status_code == 404:
        raise NotFound(f"{what} was not found.")
    if resp.status_code == 401:
        raise CredentialsError(f"Google rejected the credentials while reading {what}.", fix="Run: gcloud auth application-default login")
    if resp.status_code == 403:
        if "accessNotConfigured" in reason or "has not been used" in message or "is disabled" in message:
            raise ApiDisabled("The Compute Engine API is not enabled in this project.", fix="Run: gcloud services enable compute.googleapis.com")
        raise PermissionDenied(f"Permission denied while reading {what}: {message}")
    raise _ReadFailed(f"Reading {what} failed (HTTP {resp.status_code}): {message}", f"HTTP {resp.status_code}")


def _get(factory: Any, path: str, what: str, params: dict[str, str] | None = None, timeout: float = HTTP_TIMEOUT) -> dict[str, Any]:
    import requests

    url = factory.compute_base_url + path
    try:
        resp = factory.session.get(url, params=params, timeout=timeout)
    except requests.RequestException as e:
        raise _ReadFailed(f"Cannot reach the Compute API at {factory.compute_endpoint}: {type(e).__name__}.", type(e).__name__) from None
    _raise_for(resp, what)
    return resp.json()


def find_instance(factory: Any, name: str, zone: str | None = None) -> dict[str, Any]:
    """The instance's REST JSON, found by gcpdl.compute.lookup (cache, then project-wide);
    ``zone`` only when the user passed --zone."""
    from gcpdl.compute import lookup
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline

    compute = Compute(factory, factory.project())
    data = lookup.locate(compute, name, Deadline(2 * HTTP_TIMEOUT, f"the lookup of VM {name}"), zone)
    if data is None:
        raise lookup.not_found(compute.project, name, zone)
    return data


def guest_hostkeys(factory: Any, project: str, zone: str, name: str, deadline: Deadline | None = None) -> list[HostKey]:
    """The host keys the VM published; [] only when the API says it published none.

    The API answers 404 both when the `hostkeys/` namespace is empty and when guest attributes
    are turned off for the VM: an authenticated answer, which no one on the network path can
    forge, so only then may the caller trust a key on first use. Anything else (5xx, 429, a
    timeout, a network error: all things an attacker between here and Google can cause) is
    retried under ``deadline`` and then raises HostKeysUnavailable, never "publishes none"."""
    settings = factory.settings
    deadline = deadline or Deadline(min(float(settings.ssh_wait), HOSTKEYS_BUDGET), what=f"the host keys of {name}")
    path = f"/projects/{project}/zones/{zone}/instances/{name}/getGuestAttributes"
    poll = max(0.01, float(settings.poll_interval))
    attempt = 0
    while True:
        try:
            timeout = max(MIN_ATTEMPT_TIMEOUT, min(HTTP_TIMEOUT, deadline.remaining()))
            payload = _get(factory, path, f"guest attributes of {name}", {"queryPath": "hostkeys/"}, timeout=timeout)
            return parse_guest_attributes(payload)
        except NotFound:
            return []
        except (CredentialsError, PermissionDenied, ApiDisabled):
            raise
        except GcpdlError as e:
            last = getattr(e, "short", e.message)
        if deadline.expired():
            raise HostKeysUnavailable(
                f"Could not read the SSH host keys VM {name} publishes ({last}), so gcpdl cannot verify that "
                f"it is really your VM, and did not connect.",
                fix="Retry in a minute (the Compute API did not answer in time).",
            )
        deadline.sleep(min(backoff(attempt, base=poll, cap=HOSTKEYS_RETRY_CAP), deadline.remaining()))
        attempt += 1


def guest_attributes(factory: Any, zone: str, name: str, namespace: str) -> dict[str, str]:
    """All keys of one guest attribute namespace ({} when none are there yet)."""
    project = factory.project()
    path = f"/projects/{project}/zones/{zone}/instances/{name}/getGuestAttributes"
    try:
        payload = _get(factory, path, f"guest attributes of {name}", {"queryPath": f"{quote(namespace)}/"})
    except NotFound:
        return {}
    items = (payload.get("queryValue") or {}).get("items") or []
    return {i.get("key", ""): i.get("value", "") for i in items}


def _last(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def login_user(factory: Any, metadata: Mapping[str, str] | None = None, write: bool = True) -> "Login":
    """Who gcpdl logs in as on a VM with this instance metadata ({}: a VM about to be created),
    for ssh, jupyter, sync, up's ready wait, the ssh config and the startup script alike.

    OS Login on (instance metadata, else project metadata): the caller's POSIX user from their
    OS Login profile, gcpdl's key imported there first (``write=False``: read only, for the ssh
    config and the dry-run; user "" when OS Login has no POSIX account for the caller yet).
    Off: ``settings.ssh_user``, whose key the VM's `ssh-keys` metadata holds."""
    from gcpdl.oslogin import Login

    oslogin = factory.oslogin()
    if write:
        return oslogin.login(metadata)
    setting = oslogin.setting(metadata)
    if not setting.enabled:
        return Login(factory.settings.ssh_user, False, setting.describe())
    return Login(oslogin.profile().username or "", True, setting.describe())


def resolve_target(factory: Any, name: str, zone: str | None = None, require_running: bool = True) -> SshTarget:
    """Look the VM up and read its host keys. Raises VmNotRunning (with the command that
    starts it) unless it is RUNNING."""
    validate_name(name)
    settings = factory.settings
    data = find_instance(factory, name, zone)  # a configured zone must not hide a VM elsewhere
    zone = _last(data.get("zone"))
    status = data.get("status", "UNKNOWN")
    if require_running and status != "RUNNING":
        state = {"TERMINATED": "stopped", "STOPPING": "stopping", "SUSPENDED": "suspended"}.get(status, status.lower())
        raise VmNotRunning(f"VM {name} is {state}, not running.", fix=f"Start it with: gcpdl start {name}")
    nic = (data.get("networkInterfaces") or [{}])[0]
    access = (nic.get("accessConfigs") or [{}])[0]
    host = access.get("natIP")
    if require_running and not host:
        raise GcpdlError(f"VM {name} has no external IP address, so gcpdl cannot reach it over SSH.")
    keys = guest_hostkeys(factory, factory.project(), zone, name) if status == "RUNNING" else []
    from gcpdl.oslogin import metadata_items

    login = login_user(factory, metadata_items(data.get("metadata")), write=status == "RUNNING")
    return SshTarget(
        name=name,
        zone=zone,
        instance_id=str(data.get("id", name)),
        status=status,
        host=host,
        port=int(settings.ssh_port),
        user=login.user,
        guest_keys=tuple(keys),
        oslogin=login.oslogin,
        instance=data,
    )
