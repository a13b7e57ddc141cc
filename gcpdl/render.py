"""Templates: one function renders every file sent to the VM (startup script, systemd units).

Templates live in the top-level ``templates/`` folder of the source tree and are shipped in the
wheel as ``gcpdl/templates``; both locations are searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def templates_dir() -> Path:
    packaged = Path(__file__).parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def render(name: str, **context: Any) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(name).render(**context)
