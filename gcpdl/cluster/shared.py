"""The node side of `--shared`: mount the cluster's shared disk (gcpdl.compute.cluster.fill_shared).

The disk is /dev/disk/by-id/google-shared on every node (its device name); it is mounted at
MOUNT_POINT, read-only on every node, writable on node 0 only while `sync --shared` fills it.
"""

from __future__ import annotations

from typing import Any

MOUNT_POINT = "/mnt/shared"
DEVICE = "/dev/disk/by-id/google-shared"
DEVICE_WAIT_TRIES = 100  # x 0.2 s: the device appears a moment after the attach operation is done

_WAIT = f'for i in $(seq {DEVICE_WAIT_TRIES}); do [ -e {DEVICE} ] && break; sleep 0.2; done; [ -e {DEVICE} ] || {{ echo "no {DEVICE}" >&2; exit 1; }}'
STEPS = {
    "unmount": f"if mountpoint -q {MOUNT_POINT}; then sudo umount {MOUNT_POINT}; fi",
    # a blank disk gets a file system; then it is node 0's to write while it is filled
    "rw": (f"{_WAIT}; sudo blkid {DEVICE} >/dev/null 2>&1 || sudo mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard {DEVICE}; "
           f"sudo mkdir -p {MOUNT_POINT}; sudo mount -o discard,defaults {DEVICE} {MOUNT_POINT}; sudo chown \"$(id -u):$(id -g)\" {MOUNT_POINT}"),
    # noload: a read-only ext4 must not replay its journal (other nodes read the same blocks)
    "ro": f"{_WAIT}; sudo mkdir -p {MOUNT_POINT}; mountpoint -q {MOUNT_POINT} || sudo mount -o ro,noload {DEVICE} {MOUNT_POINT}",
}


def prepare_over_ssh(sessions: dict[str, Any]):
    """``prepare(nodes, step)`` for fill_shared: the step's commands on each node, in parallel."""
    from gcpdl.compute.cluster import _each
    from gcpdl.errors import GcpdlError

    def prepare(nodes: list[Any], step: str) -> None:
        def one(node: Any) -> None:
            r = sessions[node.name].run(f"bash -c {_quote(STEPS[step])}", timeout=120)
            if r.exit_code != 0:
                raise GcpdlError(f"Could not {step} the shared disk on {node.name}: {(r.stderr or r.stdout).strip()[:200]}")

        _each(nodes, one)

    return prepare


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
