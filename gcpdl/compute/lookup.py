"""Find a VM by name, wherever it is: the one lookup every command uses.

A stockout failover puts a VM in another zone than the configured one, so no command may assume
that zone. The VM is found project-wide: a small local cache (project -> name -> zone, instance
id) makes that one GET in the cached zone; when the cache has no entry, or the GET answers 404 or
a different instance (deleted and re-created, perhaps elsewhere), one aggregated list filtered by
name finds it and the cache is corrected. An explicit ``--zone`` narrows the search to that zone;
a zone from settings never does (it says where to create, not where a VM is).

Reads go through ``Compute``'s lean REST path (google-auth's session), never
google.cloud.compute_v1, so `gcpdl ssh` and `gcpdl jupyter` stay fast. The cache is a hint:
a corrupt or unwritable file costs one aggregated list, never an error.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from gcpdl.compute.adapter import Compute
from gcpdl.compute.model import Instance
from gcpdl.deadline import Deadline
from gcpdl.errors import InvalidInput, NotFound

CACHE_FILE = "vms.json"
LIST_FIX = "See your VMs with: gcpdl status"


def cache_dir() -> Path:
    """gcpdl's cache folder (XDG_CACHE_HOME/gcpdl on Linux); GCPDL_CACHE_DIR overrides it."""
    env = os.environ.get("GCPDL_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gcpdl", appauthor=False))


class VmCache:
    """project -> VM name -> {"zone", "id"}, in one JSON file, 0600 in a 0700 folder.

    Writes are whole-file and atomic (temp file + rename), so a reader never sees half a file;
    two gcpdl processes writing at once lose at most one entry, which costs the next lookup an
    aggregated list."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / CACHE_FILE

    def _read(self) -> dict[str, dict[str, dict[str, str]]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        projects = data.get("projects") if isinstance(data, dict) else None
        return projects if isinstance(projects, dict) else {}

    def get(self, project: str, name: str) -> tuple[str, str | None] | None:
        """(zone, instance id) last seen for the VM, or None."""
        entry = (self._read().get(project) or {}).get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("zone"), str):
            return None
        return entry["zone"], entry.get("id")

    def remember(self, project: str, instances: list[Instance]) -> None:
        data = self._read()
        vms = data.setdefault(project, {})
        changed = False
        for inst in instances:
            entry = {"zone": inst.zone, "id": inst.instance_id}
            if vms.get(inst.name) != entry:
                vms[inst.name], changed = entry, True
        if changed:
            self._write(data)

    def forget(self, project: str, name: str) -> None:
        data = self._read()
        if name in (data.get(project) or {}):
            del data[project][name]
            self._write(data)

    def _write(self, projects: dict[str, Any]) -> None:
        try:
            _private_dirs(self.path.parent)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            # 0600 from the first byte, whatever the umask (the mode is masked, never widened)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, json.dumps({"version": 1, "projects": projects}, indent=1, sort_keys=True).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written only makes the next lookup slower


def _private_dirs(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, whatever the umask; tighten ``path`` itself."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        os.chmod(d, 0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def locate(compute: Compute, name: str, deadline: Deadline, zone: str | None = None,
           cache: VmCache | None = None) -> dict[str, Any] | None:
    """The VM's REST JSON, or None when there is no VM by that name (in ``zone``, when given)."""
    cache = cache or VmCache()
    project = compute.project
    if zone:
        data = compute.get_or_none(f"/compute/v1/projects/{project}/zones/{zone}/instances/{name}", deadline)
        if data is not None:
            cache.remember(project, [Instance.from_api(data)])
        return data
    cached = cache.get(project, name)
    if cached is not None:
        data = compute.get_or_none(f"/compute/v1/projects/{project}/zones/{cached[0]}/instances/{name}", deadline)
        if data is not None and str(data.get("id")) == str(cached[1]):
            return data
    found = [i for items in compute.aggregated("instances", deadline, filter=f'name = "{name}"').values()
             for i in items if i.get("name") == name]  # the filter is an optimisation; the name check is the contract
    if not found:
        cache.forget(project, name)
        return None
    if len(found) > 1:
        # names are per zone; gcpdl never makes a second one, so prefer the one it made
        ours = [i for i in found if Instance.from_api(i).managed]
        if len(ours) != 1:
            zones = ", ".join(sorted(Instance.from_api(i).zone for i in found))
            raise InvalidInput(f"There are VMs named {name} in several zones ({zones}); gcpdl cannot tell which one you mean.",
                               fix="Pass --zone (ssh, jupyter, sync), or rename one of them.")
        found = ours
    cache.remember(project, [Instance.from_api(found[0])])
    return found[0]


def not_found(project: str, name: str, zone: str | None = None) -> NotFound:
    where = f"in zone {zone} of project {project}" if zone else f"in project {project}"
    return NotFound(f"No VM named {name} {where}.", fix=LIST_FIX)


def find(compute: Compute, name: str, deadline: Deadline, zone: str | None = None) -> Instance | None:
    data = locate(compute, name, deadline, zone)
    return Instance.from_api(data) if data is not None else None


def require(compute: Compute, name: str, deadline: Deadline, zone: str | None = None) -> Instance:
    inst = find(compute, name, deadline, zone)
    if inst is None:
        raise not_found(compute.project, name, zone)
    return inst


def remember(compute: Compute, *instances: Instance) -> None:
    """`up`, `start` and `status` saw these VMs: the next lookup goes straight to their zone."""
    VmCache().remember(compute.project, list(instances))


def forget(compute: Compute, name: str) -> None:
    """`down` deleted the VM."""
    VmCache().forget(compute.project, name)


__all__ = ["VmCache", "cache_dir", "find", "forget", "locate", "not_found", "remember", "require"]
