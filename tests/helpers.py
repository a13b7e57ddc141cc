"""Small helpers shared by the CLI and sync tests."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner, Result

from gcpdl.cli.app import cli

ZONE = "us-central1-a"


def run(*args: str, input: str | None = None) -> Result:
    """`gcpdl ARGS` through click's CliRunner. `up` stops at RUNNING here: waiting for SSH and
    Jupyter needs the sshd fixture and is tested in test_up_ready.py."""
    if args and args[0] == "up":
        args = ("up", "--no-wait", *args[1:])
    return CliRunner().invoke(cli, list(args), input=input)


def local_files(root: Path) -> dict[str, Path]:
    """Files a sync left under ``root`` (relative name -> path), without gcpdl's own .gcpdl dir."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root and ".gcpdl" in dirs:
            dirs.remove(".gcpdl")
        for f in files:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = p
    return out


def tree(root: Path) -> dict[str, bytes]:
    return {rel: p.read_bytes() for rel, p in local_files(root).items()}
