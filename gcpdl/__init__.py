"""gcpdl: a GPU VM with JupyterLab and your dataset, on Google Cloud, in one command."""

# Written so that old Pythons still parse this file and can say why they cannot go on:
# no f-strings, no annotations, nothing newer than Python 3.0 above the check.
import sys

if sys.version_info < (3, 10):
    sys.stderr.write(
        "gcpdl needs Python 3.10 or newer; this is Python %d.%d. Install a newer one "
        "(python.org, your package manager, or `uv python install 3.12`) and reinstall gcpdl "
        "with it: pipx install --python python3.12 .\n" % tuple(sys.version_info[:2])
    )
    raise SystemExit(1)

__version__ = "0.1.0"
