"""The VM's startup script (STUB: issue 3 fills in templates/startup.sh.j2 and this module).

`up` calls ``render_startup_script(StartupOptions(...))`` and sends the result as the
`startup-script` metadata value. Keep the signature stable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartupOptions:
    user: str = "gcpdl"
    data_disk: bool = False  # a separate persistent disk named NAME-data, attached as device "data"
    gpu: bool = True
    autostop_minutes: int | None = 60  # None: autostop off


def render_startup_script(options: StartupOptions) -> str:
    from gcpdl.render import render

    return render("startup.sh.j2", o=options)
