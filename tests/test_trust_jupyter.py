"""Issue 9 item 5: the Jupyter token never goes on the browser's command line (readable by any
local user in /proc/PID/cmdline). The browser opens a 0600 redirect file, as Jupyter does.
End to end: `gcpdl jupyter` in its own process, the real sshd and jupyter server, and the real
`webbrowser` module launching a recording "browser" through $BROWSER."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.fixtures.ssh import wait_until


def test_browser_gets_a_private_redirect_file_not_the_token(ssh_vm, jupyter_server, tmp_path: Path):
    record = tmp_path / "browser-argv"
    browser = tmp_path / "browser.sh"
    # copy the file while it exists: gcpdl removes it when the tunnel closes
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}.tmp"\n'
                       f'f="${{1#file://}}"; cp "$f" "{tmp_path}/seen.html"; stat -c %a "$f" > "{tmp_path}/seen.mode"\n'
                       f'mv "{record}.tmp" "{record}"\n')
    browser.chmod(0o755)
    env = dict(os.environ, BROWSER=f"{browser} %s")
    env.pop("GCPDL_NO_BROWSER", None)
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "jupyter", "box"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_until(record.exists, timeout=60), "the browser was never started"
        argv = record.read_text()
        assert jupyter_server.token not in argv
        assert argv.startswith("file://") and argv.strip().endswith(".html")
        opened = Path(argv.strip()[len("file://"):])
        assert (tmp_path / "seen.mode").read_text().strip() == "600"
        assert jupyter_server.token in (tmp_path / "seen.html").read_text()  # the redirect carries it
        assert stat.S_IMODE(opened.parent.stat().st_mode) == 0o700
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not opened.exists()  # removed with the tunnel
