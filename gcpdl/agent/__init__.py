"""The autostop agent: runs ON the VM as a systemd service and stops the VM from inside once it
has been idle for the whole window (issue 5).

Everything in this package is stdlib-only: the startup script ships these source files to the VM
and runs them with the system python3, where nothing from PyPI is installed. Do not import
anything outside ``gcpdl.agent`` and the standard library here.

Layout: ``signals`` (what is going on: Jupyter, GPU, SSH, sync), ``policy`` (the idle window, a
pure state machine over monotonic time), ``metadata`` (the GCE metadata server: the
``gcpdl-autostop`` setting and the ``gcpdl/autostop`` guest attribute), ``main`` (the loop and
the command line: ``python3 -m gcpdl.agent``).
"""

from __future__ import annotations

from pathlib import Path

# The files the VM needs, relative to the directory put on PYTHONPATH there. The empty
# gcpdl/__init__.py stands in for the real one, which imports things the VM does not have.
_MODULES = ("__init__.py", "__main__.py", "signals.py", "policy.py", "metadata.py", "main.py", "peers.py")


def agent_sources() -> dict[str, str]:
    """{relative path: source text} for the startup script to write under /opt/gcpdl-agent."""
    here = Path(__file__).parent
    files = {"gcpdl/__init__.py": '"""gcpdl autostop agent (only the agent is installed here)."""\n'}
    for name in _MODULES:
        files[f"gcpdl/agent/{name}"] = (here / name).read_text()
    return files
