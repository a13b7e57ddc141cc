"""The VM's SSH firewall rules, and the caller's address they allow.

Two rules per VM, both on the VM's network tag: an allow for tcp:22 from the caller's address
(priority 1000) and a deny for tcp:22 from everyone (priority 2000). The deny is what keeps a
project's own wide rules (the default network's `default-allow-ssh`: tcp:22 from 0.0.0.0/0 to
every VM, priority 65534) from opening gcpdl's VMs to the internet. There is never a rule for
Jupyter: it is reached through the SSH tunnel only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from gcpdl.compute import requests as rq
from gcpdl.compute.model import ApiCall
from gcpdl.errors import GcpdlError, InvalidInput

# Plain-text echo services over HTTPS, asked in order until one gives a usable answer.
IP_ECHO_URLS = ("https://api.ipify.org", "https://checkip.amazonaws.com")
IP_LOOKUP_TIMEOUT = 4.0
ANYWHERE = rq.WORLD
# Sources wider than this many prefix bits get a warning: a /8 is 16 million addresses.
WIDE_PREFIX = 8
SSH_FROM_FIX = "Pass --ssh-from YOUR.PUBLIC.IP/32 (or set GCPDL_MY_IP to your public IPv4 address)."


def _http_lookup(url: str, timeout: float) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URLs
        return resp.read(64).decode(errors="replace").strip()


# IPv4 ranges that can never be the address Google sees a laptop's packets come from. The
# documentation ranges (RFC 5737: 192.0.2/24, 198.51.100/24, 203.0.113/24) are left out on
# purpose: no echo service answers them, and they are what examples and tests use.
_NOT_PUBLIC = tuple((ipaddress.ip_network(net), what) for net, what in (
    ("0.0.0.0/8", "an unspecified"), ("10.0.0.0/8", "a private"), ("100.64.0.0/10", "a carrier-grade NAT"),
    ("127.0.0.0/8", "a loopback"), ("169.254.0.0/16", "a link-local"), ("172.16.0.0/12", "a private"),
    ("192.0.0.0/24", "a reserved"), ("192.168.0.0/16", "a private"), ("198.18.0.0/15", "a benchmarking"),
    ("224.0.0.0/4", "a multicast"), ("240.0.0.0/4", "a reserved"),
))


def _why_unusable(value: str) -> str | None:
    """None for a public IPv4 address; otherwise why it cannot be the SSH source."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return "not an IP address"
    if addr.version == 6:
        return "an IPv6 address (gcpdl's SSH rule is IPv4: the VM has no IPv6 address)"
    for net, what in _NOT_PUBLIC:
        if addr in net:
            return f"{what} address, not the one Google sees"
    return None


def _shown(value: str) -> str:
    """An answer as it may be shown: printable, short."""
    text = "".join(c if c.isprintable() else "?" for c in value)
    return text[:40] + ("..." if len(text) > 40 else "")


def my_ip_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """GCPDL_MY_IP, checked: a public IPv4 address, or None when unset.

    A CIDR here is an input error, not a range: the variable names an address (the one Google
    sees), and `GCPDL_MY_IP=0.0.0.0/0` silently opening SSH to the world through a variable that
    does not say so is the mistake to prevent. A range has one documented path, --ssh-from (or
    the ssh_from setting), which warns when it is wide."""
    env = os.environ if env is None else env
    raw = env.get("GCPDL_MY_IP")
    if not raw:
        return None
    value = raw.strip()
    if "/" in value:
        raise InvalidInput(f"GCPDL_MY_IP='{_shown(value)}' is a range; it must be your public IPv4 address.",
                           fix="Use --ssh-from CIDR (or the ssh_from setting) to allow a range.")
    why = _why_unusable(value)
    if why:
        raise InvalidInput(f"GCPDL_MY_IP='{_shown(value)}' is {why}.", fix=SSH_FROM_FIX)
    return str(ipaddress.ip_address(value))


def my_ip(env: Mapping[str, str] | None = None, lookup: Callable[[str, float], str] = _http_lookup) -> str:
    """The caller's public IPv4 address. GCPDL_MY_IP overrides (tests, and users behind NAT
    pools whose echo answer is not the address Google sees). Each echo service is asked in
    turn until one answers a public IPv4 address: a garbage, private or IPv6 answer from one
    is no reason to stop asking."""
    given = my_ip_from_env(env)
    if given:
        return given
    problems = []
    for url in IP_ECHO_URLS:
        try:
            answer = lookup(url, IP_LOOKUP_TIMEOUT).strip()
        except Exception as e:  # noqa: BLE001 - any failure: try the next echo
            problems.append(f"{url}: {type(e).__name__}")
            continue
        why = _why_unusable(answer)
        if why is None:
            return str(ipaddress.ip_address(answer))
        problems.append(f"{url} answered '{_shown(answer)}', {why}")
    raise GcpdlError(
        f"Could not find your public IPv4 address for the SSH firewall rule ({'; '.join(problems)}).",
        fix=SSH_FROM_FIX,
    )


def ssh_source(ssh_from: str | None, env: Mapping[str, str] | None = None, lookup: Callable[[str, float], str] = _http_lookup) -> str:
    """The CIDR the rule allows: --ssh-from / setting if given, else the caller's address /32."""
    if ssh_from:
        return str(ipaddress.ip_network(ssh_from, strict=False))
    return f"{my_ip(env, lookup)}/32"


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise InvalidInput(f"Invalid --ssh-from '{cidr}'.") from None


def is_open_to_world(cidr: str) -> bool:
    return _network(cidr).prefixlen == 0


def width_warning(cidr: str) -> str | None:
    """A warning for an SSH source wider than a /8 (None for narrower ones)."""
    net = _network(cidr)
    if net.prefixlen == 0:
        return f"SSH will be open to the whole internet ({net}); prefer your own address."
    if net.prefixlen < WIDE_PREFIX:
        return f"SSH will be open to {net.num_addresses:,} addresses ({net}); prefer your own address."
    return None


# --- the rules ------------------------------------------------------------------------------
def plan_rule(project: str, vm_name: str, source: str, existing: dict | None, network: str = rq.DEFAULT_NETWORK) -> ApiCall | None:
    """insert when missing, patch when the allowed source changed, nothing when it matches."""
    if existing is None:
        return rq.firewall_insert(project, vm_name, source, network)
    if list(existing.get("sourceRanges") or []) != [source]:
        return rq.firewall_patch(project, vm_name, source)
    return None


def plan_deny(project: str, vm_name: str, existing: dict | None, network: str = rq.DEFAULT_NETWORK) -> ApiCall | None:
    """insert the deny rule when missing, patch it back when someone changed what it does."""
    if existing is None:
        return rq.deny_insert(project, vm_name, network)
    want = rq.deny_body(project, vm_name, network)
    if any(existing.get(k) != want[k] for k in rq.DENY_FIELDS) or existing.get("disabled"):
        return rq.deny_patch(project, vm_name)
    return None


def rule_path(project: str, vm_name: str) -> str:
    return rq.firewall_path(project, rq.firewall_name(vm_name))


def deny_path(project: str, vm_name: str) -> str:
    return rq.firewall_path(project, rq.deny_rule_name(vm_name))


def apply(compute, vm_name: str, call: ApiCall, deadline) -> bool:
    """Run the planned insert/patch; True when this run created the rule. Another laptop may
    have created it since we looked (409 alreadyExists): then only its content needs setting."""
    def patch() -> ApiCall:
        if call.resource == rq.deny_rule_name(vm_name):
            return rq.deny_patch(call.project, vm_name)
        return rq.firewall_patch(call.project, vm_name, call.body["sourceRanges"][0])  # type: ignore[index]

    return _insert_or_patch(compute, call, deadline, patch)


def _insert_or_patch(compute, call: ApiCall, deadline, patch: Callable[[], ApiCall | None]) -> bool:
    """Run ``call``; True when it created the rule. An insert answered 409 (made meanwhile,
    e.g. from another laptop) runs ``patch()`` instead, when it gives a call."""
    from gcpdl.errors import Conflict

    try:
        compute.run(call, deadline)
        return call.kind == "firewalls.insert"
    except Conflict:
        if call.kind != "firewalls.insert":
            raise
        fix = patch()
        if fix is not None:
            compute.run(fix, deadline)
        return False


def ensure_rules(compute, vm_name: str, source: str | None, deadline, network: str = rq.DEFAULT_NETWORK,
                 progress: Callable[[str], None] | None = None) -> None:
    """Read both rules and put right what is missing or changed: the allow rule to ``source``
    (None: leave its source alone) and the deny rule. For a VM that already exists (`up` on it,
    `start`)."""
    from concurrent.futures import ThreadPoolExecutor

    project = compute.project
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gcpdl-fw") as pool:
        f_allow = pool.submit(compute.get_or_none, rule_path(project, vm_name), deadline)
        f_deny = pool.submit(compute.get_or_none, deny_path(project, vm_name), deadline)
        allow, deny = f_allow.result(), f_deny.result()
    calls = [c for c in (plan_rule(project, vm_name, source, allow, network) if source else None,
                         plan_deny(project, vm_name, deny, network)) if c is not None]
    if not calls:
        return
    compute.clients_for(["firewalls.insert", "firewalls.patch"])
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gcpdl-fw") as pool:
        for f in [pool.submit(apply, compute, vm_name, c, deadline) for c in calls]:
            f.result()
    if progress is not None:
        for c in calls:
            if c.resource == rq.firewall_name(vm_name):
                progress(f"SSH now allowed from {source} (firewall rule {c.resource}).")
            else:
                progress(f"Restored the firewall rule {c.resource} that keeps SSH to {vm_name} closed to everyone else.")


def moved_address(factory: Any, vm_name: str) -> str | None:
    """When an SSH connection timed out: a sentence saying the SSH rule does not allow the
    caller's current address, or None when it does (or either cannot be found: then the
    timeout has another cause and is reported as it is)."""
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline

    try:
        compute = Compute(factory, factory.project())
        rule = compute.get_or_none(rule_path(compute.project, vm_name), Deadline(IP_LOOKUP_TIMEOUT * 3, "the SSH rule"))
        here = ipaddress.ip_address(my_ip())
    except GcpdlError:
        return None
    if rule is None:
        return f"Its SSH firewall rule {rq.firewall_name(vm_name)} is missing, so nothing reaches it."
    ranges = [c for c in rule.get("sourceRanges") or [] if _parses(c)]
    if any(here in ipaddress.ip_network(c, strict=False) for c in ranges):
        return None
    return (f"Your address changed: the SSH firewall rule {rq.firewall_name(vm_name)} allows {', '.join(ranges) or 'nothing'}, "
            f"and you are now at {here}.")


# --- other rules that open gcpdl's VMs to the world ------------------------------------------
NEW_VMS = "new gcpdl VMs"


@dataclass(frozen=True)
class OpenRule:
    """A firewall rule, not gcpdl's, that lets the whole internet reach a gcpdl VM."""

    rule: str
    ports: str  # "tcp:22", "tcp:3389", "icmp", "all"
    vms: tuple[str, ...]  # the VMs it reaches (NEW_VMS for ones `up` would create)
    ssh_only: bool  # it opens tcp:22 and nothing else
    reaches_ssh: bool  # it covers tcp:22
    outranks_deny: bool  # priority number below gcpdl's deny rule: SSH from anywhere gets through
    missing_deny: tuple[str, ...] = ()  # VMs whose own deny rule is gone

    @property
    def ssh_open(self) -> bool:
        return self.reaches_ssh and (self.outranks_deny or bool(self.missing_deny))

    @property
    def harmless(self) -> bool:
        """Shut by gcpdl's deny rule (SSH only), or ICMP only."""
        return not self.ssh_open and (self.ssh_only or self.ports == "icmp")

    def message(self) -> str:
        who = ", ".join(self.vms)
        head = f"Firewall rule {self.rule} opens {self.ports} to the whole internet for {who}"
        delete = f"gcloud compute firewall-rules delete {self.rule}"
        if self.reaches_ssh and self.outranks_deny:
            return f"{head}, and it outranks gcpdl's deny rule: SSH is open to everyone. Delete it if nothing needs it: {delete}"
        if self.ssh_open:
            vms = ", ".join(self.missing_deny)
            return (f"{head}, and gcpdl's deny rule for {vms} is missing: SSH is open to everyone. "
                    f"Restore it with: gcpdl start {self.missing_deny[0]} (or gcpdl up {self.missing_deny[0]})")
        if self.harmless:
            return f"{head}; gcpdl's deny rule shuts it for port 22."
        return f"{head}; gcpdl's deny rule covers port 22 but not the other ports. Delete it if nothing needs it: {delete}"

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "ports": self.ports, "vms": list(self.vms), "harmless": self.harmless,
                "ssh_open": self.ssh_open, "message": self.message()}


def _ports(entries: Iterable[dict]) -> str:
    out = []
    for e in entries:
        proto = str(e.get("IPProtocol", "all"))
        ports = e.get("ports") or []
        out.append(f"{proto}:{','.join(ports)}" if ports else proto)
    return ", ".join(out) or "all"


def _only_ssh(entries: list[dict]) -> bool:
    return bool(entries) and all(str(e.get("IPProtocol")).lower() == "tcp" and (e.get("ports") or []) == ["22"] for e in entries)


def _covers_ssh(entries: list[dict]) -> bool:
    for e in entries:
        if str(e.get("IPProtocol")).lower() not in ("tcp", "all"):
            continue
        ports = e.get("ports") or []
        if not ports or any(int(p.partition("-")[0]) <= 22 <= int(p.partition("-")[2] or p.partition("-")[0]) for p in ports):
            return True
    return False


def world_open_rules(rules: Iterable[dict], vms: Iterable[tuple[str, str, Iterable[str]]],
                     new_vms_network: str | None = None) -> list[OpenRule]:
    """Enabled INGRESS allow rules, other than gcpdl's own, that let 0.0.0.0/0 reach any of
    ``vms`` ((name, network, tags) each): rules with no target (every instance in the network)
    or a target tag a gcpdl VM carries. ``new_vms_network``: also count the VMs `up` would
    create there (they carry only their own tag). Rules that target service accounts are left
    out: which account they name cannot be matched from here."""
    rules = list(rules)
    names = {r.get("name") for r in rules}
    vm_list = [(name, network, set(tags)) for name, network, tags in vms]
    gcpdl_rules = {rq.firewall_name(n) for n, _, _ in vm_list} | {rq.deny_rule_name(n) for n, _, _ in vm_list}
    # the tags a gcpdl deny rule shuts: a cluster's nodes are covered by the cluster's one rule
    denied_tags = {t for r in rules if str(r.get("name", "")).startswith("gcpdl-deny-ssh-") and not r.get("disabled")
                   for t in r.get("targetTags") or []}
    vm_tags = {n: tags for n, _, tags in vm_list}
    out = []
    for r in rules:
        if r.get("disabled") or r.get("direction", "INGRESS") != "INGRESS" or not r.get("allowed"):
            continue
        if r.get("name") in gcpdl_rules or r.get("targetServiceAccounts"):
            continue
        if not any(ipaddress.ip_network(c, strict=False).prefixlen == 0 for c in r.get("sourceRanges") or [] if _parses(c)):
            continue
        net = str(r.get("network") or "").rsplit("/", 1)[-1]
        targets = set(r.get("targetTags") or [])
        hit = [n for n, network, tags in vm_list if network == net and (not targets or targets & tags)]
        if new_vms_network == net and not targets:
            hit.append(NEW_VMS)
        if hit:
            missing = tuple(n for n in hit if n != NEW_VMS and rq.deny_rule_name(n) not in names
                            and not vm_tags.get(n, set()) & denied_tags)
            out.append(OpenRule(str(r["name"]), _ports(r["allowed"]), tuple(hit), _only_ssh(r["allowed"]),
                                _covers_ssh(r["allowed"]), int(r.get("priority", 1000)) < rq.DENY_PRIORITY, missing))
    return sorted(out, key=lambda o: o.rule)


def _parses(cidr: str) -> bool:
    try:
        ipaddress.ip_network(cidr, strict=False)
        return True
    except ValueError:
        return False


def list_rules(compute, deadline) -> list[dict]:
    """Every firewall rule in the project (all pages)."""
    out: list[dict] = []
    params: dict[str, str] = {"maxResults": "500"}
    while True:
        page = compute.get(rq.firewall_path(compute.project), deadline, params=params, what="Firewall rules")
        out.extend(page.get("items") or [])
        token = page.get("nextPageToken")
        if not token:
            return out
        params = {**params, "pageToken": token}


# --- clusters: the rule that lets a cluster's nodes reach each other ---------------------------
INTRA_FIELDS = ("direction", "priority", "allowed", "sourceTags", "targetTags")


def intra_path(project: str, cluster: str) -> str:
    return rq.firewall_path(project, rq.intra_rule_name(cluster))


def plan_intra(project: str, cluster: str, existing: dict | None, network: str = rq.DEFAULT_NETWORK) -> ApiCall | None:
    """insert the intra-cluster rule when missing, patch it back when someone changed what it does."""
    want = rq.intra_body(project, cluster, network)
    if existing is None:
        return rq.intra_insert(project, cluster, network)
    if any(existing.get(k) != want[k] for k in INTRA_FIELDS) or existing.get("disabled"):
        body = {k: want[k] for k in ("description", *INTRA_FIELDS)}
        return ApiCall("firewalls.patch", "PATCH", intra_path(project, cluster), body, project, None, want["name"])
    return None


def apply_intra(compute, cluster: str, call: ApiCall, deadline) -> bool:
    """Run the planned intra-cluster insert/patch; True when this run created the rule."""
    network = (call.body or {}).get("network", "").rsplit("/", 1)[-1] or rq.DEFAULT_NETWORK
    return _insert_or_patch(compute, call, deadline, lambda: plan_intra(call.project, cluster, {}, network))
