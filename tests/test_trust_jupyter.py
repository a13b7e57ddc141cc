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


def test_ctrl_c_while_the_browser_starts_leaves_no_redirect_file(ssh_vm, jupyter_server, tmp_path: Path):
    """Ctrl-C can come while the browser is still starting (webbrowser waits for it): the file
    that carries the token must be removed then too. The "browser" here interrupts gcpdl itself,
    so the moment is exact (under load a person's Ctrl-C landed there once)."""
    record = tmp_path / "browser-argv"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nkill -INT $PPID\nsleep 1\n')
    browser.chmod(0o755)
    env = dict(os.environ, BROWSER=f"{browser} %s")
    env.pop("GCPDL_NO_BROWSER", None)
    proc = subprocess.run([sys.executable, "-m", "gcpdl", "jupyter", "box"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode in (0, 130), proc.stderr
    opened = Path(record.read_text().strip()[len("file://"):])
    assert opened.name.endswith("-open.html")
    assert not opened.exists(), "the redirect file with the token was left behind"
