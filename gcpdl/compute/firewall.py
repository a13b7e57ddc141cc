"""The SSH firewall rule: tcp:22 to the VM's network tag, only from the caller's address.

There is never a rule for Jupyter: it is reached through the SSH tunnel only.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Callable, Mapping

from gcpdl.compute import requests as rq
from gcpdl.compute.model import ApiCall
from gcpdl.errors import GcpdlError, InvalidInput

# Plain-text echo services over HTTPS; the first that answers wins.
IP_ECHO_URLS = ("https://api.ipify.org", "https://checkip.amazonaws.com")
IP_LOOKUP_TIMEOUT = 4.0
ANYWHERE = "0.0.0.0/0"


def _http_lookup(url: str, timeout: float) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URLs
        return resp.read(64).decode().strip()


def my_ip(env: Mapping[str, str] | None = None, lookup: Callable[[str, float], str] = _http_lookup) -> str:
    """The caller's public IPv4 address. GCPDL_MY_IP overrides (tests, and users behind NAT
    pools whose echo answer is not the address Google sees)."""
    env = os.environ if env is None else env
    raw = env.get("GCPDL_MY_IP")
    candidates = [raw] if raw else []
    errors = []
    if not candidates:
        for url in IP_ECHO_URLS:
            try:
                candidates.append(lookup(url, IP_LOOKUP_TIMEOUT))
                break
            except Exception as e:  # noqa: BLE001 - any failure: try the next echo
                errors.append(type(e).__name__)
    for value in candidates:
        try:
            addr = ipaddress.ip_address(value.strip())
        except ValueError:
            continue
        if addr.version == 4:
            return str(addr)
    raise GcpdlError(
        "Could not find your public IP address for the SSH firewall rule.",
        fix="Pass --ssh-from YOUR.IP/32 (or set GCPDL_MY_IP).",
    )


def ssh_source(ssh_from: str | None, env: Mapping[str, str] | None = None, lookup: Callable[[str, float], str] = _http_lookup) -> str:
    """The CIDR the rule allows: --ssh-from / setting if given, else the caller's address /32."""
    if ssh_from:
        return str(ipaddress.ip_network(ssh_from, strict=False))
    return f"{my_ip(env, lookup)}/32"


def is_open_to_world(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        raise InvalidInput(f"Invalid --ssh-from '{cidr}'.") from None


def plan_rule(project: str, vm_name: str, source: str, existing: dict | None) -> ApiCall | None:
    """insert when missing, patch when the allowed source changed, nothing when it matches."""
    if existing is None:
        return rq.firewall_insert(project, vm_name, source)
    if list(existing.get("sourceRanges") or []) != [source]:
        return rq.firewall_patch(project, vm_name, source)
    return None


def rule_path(project: str, vm_name: str) -> str:
    return f"{rq.API}/projects/{project}/global/firewalls/{rq.firewall_name(vm_name)}"


def apply(compute, vm_name: str, call: ApiCall, deadline) -> bool:
    """Run the planned insert/patch; True when this run created the rule. Another laptop may
    have created it since we looked (409 alreadyExists): then only its source needs setting."""
    from gcpdl.errors import Conflict

    try:
        compute.run(call, deadline)
        return call.kind == "firewalls.insert"
    except Conflict:
        if call.kind != "firewalls.insert":
            raise
        compute.run(rq.firewall_patch(call.project, vm_name, call.body["sourceRanges"][0]), deadline)  # type: ignore[index]
        return False
