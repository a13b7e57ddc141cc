"""Which VPC network and subnetwork a new VM goes into, decided from one read of the network.

gcpdl uses the `default` network unless told otherwise (--network, the `network` setting,
GCPDL_NETWORK). Some projects have none: it was deleted, or an organisation policy
(`compute.skipDefaultNetworkCreation`) skipped it. That is found before anything is created.

An auto-mode network has a subnet in every region, named like the network, and the API picks it
when the instance names only the network. A custom-mode network needs a subnetwork in the
instance's region: the only one there is taken, several need --subnet. The network resource lists
its subnetworks' URLs, so no subnetwork read is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gcpdl.compute import requests as rq
from gcpdl.errors import ConfigError, InvalidInput
from gcpdl.pricing import region_of

CREATE_DEFAULT = "gcloud compute networks create default --subnet-mode=auto"


def network_path(project: str, network: str) -> str:
    return f"{rq.API}/projects/{project}/global/networks/{network}"


@dataclass(frozen=True)
class NetworkChoice:
    name: str
    auto: bool  # auto-mode (or legacy): no subnetwork field needed
    subnets: dict[str, str] = field(default_factory=dict)  # region -> subnet to name in the body

    def usable(self, zone: str) -> bool:
        return self.auto or region_of(zone) in self.subnets

    def subnet_for(self, zone: str) -> str | None:
        return self.subnets.get(region_of(zone))


def _subnets_by_region(doc: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for url in doc.get("subnetworks") or []:
        parts = url.rstrip("/").split("/")
        if len(parts) >= 4 and parts[-2] == "subnetworks" and parts[-4] == "regions":
            out.setdefault(parts[-3], []).append(parts[-1])
    return {r: sorted(names) for r, names in out.items()}


def choose(project: str, network: str, subnet: str | None, doc: dict | None, first_zone: str | None, given: bool) -> NetworkChoice:
    """The network and, per region, the subnet a VM in ``first_zone`` (and its failover zones)
    uses. ``doc`` is the network resource, None when it does not exist; ``given``: the user named
    the network (else it is `default`). Raises a one-line error with the fix."""
    alt = "or use an existing VPC network: gcpdl up NAME --network NETWORK [--subnet SUBNET]"
    if doc is None:
        if not given:
            raise ConfigError(
                f"Project {project} has no network named 'default' (it was deleted, or an organisation policy skipped it).",
                fix=f"Create it: {CREATE_DEFAULT} ; {alt}.",
            )
        raise InvalidInput(
            f"Project {project} has no network named '{network}'.",
            fix=f"See its networks with: gcloud compute networks list --project {project}",
        )
    by_region = _subnets_by_region(doc)
    region = region_of(first_zone or "us-central1-a")
    legacy = "autoCreateSubnetworks" not in doc and bool(doc.get("IPv4Range"))
    if subnet is not None:
        if legacy:
            raise InvalidInput(f"Network {network} is a legacy network without subnetworks; leave out --subnet.")
        if subnet not in by_region.get(region, []):
            there = ", ".join(by_region.get(region, [])) or "none"
            raise InvalidInput(
                f"Network {network} has no subnet '{subnet}' in region {region} (its subnets there: {there}).",
                fix=f"See them with: gcloud compute networks subnets list --network {network} --project {project}",
            )
        return NetworkChoice(network, False, {r: subnet for r, names in by_region.items() if subnet in names})
    if doc.get("autoCreateSubnetworks") or legacy:
        return NetworkChoice(network, True)
    mine = by_region.get(region, [])
    if not mine:
        regions = ", ".join(sorted(by_region)) or "none"
        raise InvalidInput(
            f"Network {network} has no subnet in region {region} (it has subnets in: {regions}).",
            fix=(f"Pick a zone in one of those regions (--zone), or create a subnet: gcloud compute networks subnets create "
                 f"{network}-{region} --network {network} --region {region} --range 10.10.0.0/24"),
        )
    if len(mine) > 1:
        raise InvalidInput(
            f"Network {network} has {len(mine)} subnets in region {region} ({', '.join(mine)}); say which with --subnet.",
        )
    # failover stays in regions where the choice is as clear: exactly one subnet
    return NetworkChoice(network, False, {r: names[0] for r, names in by_region.items() if len(names) == 1})
