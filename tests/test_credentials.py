"""Credential discovery (issue 10 §5): off GCE no metadata-server probe, on GCE the VM's own
credentials; a network failure while fetching a token says so; google-auth's quota-project
warning is explained once, in gcpdl's words.

google-auth reads NO_GCE_CHECK at import, and the isolation fixture sets it for this process, so
discovery runs in a fresh interpreter with an environment built here. The "metadata server" is
a loopback HTTP server that counts requests. No timed assertions: the figures are in the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import run

ROOT = Path(__file__).resolve().parent.parent


class _Metadata(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        body = b"test-project" if "project-id" in self.path else b""
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/text")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_server():
    _Metadata.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, _Metadata.hits
    finally:
        server.shutdown()
        server.server_close()


DISCOVER = """
import sys, gcpdl.clients as c
from gcpdl.settings import Settings
c.DMI_FILES = tuple(sys.argv[1:])
try:
    creds = c.ClientFactory(Settings()).credentials()
    print("FOUND", type(creds).__module__ + "." + type(creds).__name__)
except c.CredentialsError as e:
    print("ERROR", e.message)
"""


def _discover(home: Path, env: dict[str, str], dmi: list[str]) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "NO_GCE_CHECK", "CLOUDSDK_"))}
    base.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", DISCOVER, *dmi], env=base, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_off_gce_no_credentials_never_probes_the_metadata_server(metadata_server, tmp_path):
    server, hits = metadata_server
    missing = str(tmp_path / "no-such-dmi-file")
    line = _discover(tmp_path, {"GCE_METADATA_IP": f"127.0.0.1:{server.server_port}"}, [missing])
    assert line == "ERROR No Google credentials found (Your default credentials were not found)."
    assert hits == []  # google-auth would ping (and on a dead address, retry for ~3 s)


def test_on_gce_the_vms_credentials_are_found(metadata_server, tmp_path):
    server, hits = metadata_server
    product = tmp_path / "product_name"
    product.write_text("Google Compute Engine\n")
    addr = f"127.0.0.1:{server.server_port}"
    line = _discover(tmp_path, {"GCE_METADATA_IP": addr, "GCE_METADATA_HOST": addr}, [str(product)])
    assert line == "FOUND google.auth.compute_engine.credentials.Credentials"
    assert hits  # asked the metadata server, as google-auth does on GCE


def test_gce_metadata_host_means_a_metadata_server_is_expected(metadata_server, tmp_path):
    server, hits = metadata_server
    addr = f"127.0.0.1:{server.server_port}"
    line = _discover(tmp_path, {"GCE_METADATA_IP": addr, "GCE_METADATA_HOST": addr}, [str(tmp_path / "none")])
    assert line == "FOUND google.auth.compute_engine.credentials.Credentials"


def test_an_unreachable_token_endpoint_says_cannot_reach_google(gcp, monkeypatch, tmp_path):
    from tests.fixtures.ports import free_port

    key = json.loads(gcp.key_file.read_text())
    key["token_uri"] = f"http://127.0.0.1:{free_port()}/token"
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    result = run("status")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "gcloud auth" not in line, line
    assert line.startswith(f"Error: Cannot reach Google to get an access token ({key['token_uri']}): connection refused.")
    assert line.endswith("Check your network, a firewall, or a proxy (HTTPS_PROXY).")


def test_a_dns_failure_is_named_as_such():
    import socket

    from google.auth import exceptions as gexc

    from gcpdl.clients import token_error

    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as dns:
            raise gexc.TransportError("HTTPSConnectionPool(host='oauth2.googleapis.com'): Max retries exceeded") from dns
    except gexc.TransportError as e:
        err = token_error(e, "https://oauth2.googleapis.com/token")
    assert err.message == (
        "Cannot reach Google to get an access token (https://oauth2.googleapis.com/token): "
        "the name oauth2.googleapis.com does not resolve (DNS)."
    )
    assert err.fix == "Check your network and DNS, or a proxy (HTTPS_PROXY)."


def test_long_messages_are_cut_between_words():
    from gcpdl.clients import clip

    text = "word " * 60
    out = clip(text.strip(), 42)
    assert len(out) <= 42 and out.endswith("…") and out[:-1].rstrip().split(" ")[-1] == "word"
    assert clip("short", 42) == "short"


def _user_adc(token_uri: str) -> Path:
    """What `gcloud auth application-default login` writes (gcloud's own client, no quota
    project), with the token endpoint on loopback."""
    from google.auth import _cloud_sdk

    path = Path(os.environ["CLOUDSDK_CONFIG"]) / "application_default_credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "authorized_user", "client_id": _cloud_sdk.CLOUD_SDK_CLIENT_ID,
                                "client_secret": "s", "refresh_token": "r", "token_uri": token_uri}))
    return path


def test_quota_project_warning_is_explained_once_in_gcpdls_words(monkeypatch):
    """google-auth's UserWarning (with a site-packages path) printed on every command: gcpdl
    says it once, with the fix, and remembers that it did (in its state dir)."""
    from tests.fixtures.ports import free_port

    _user_adc(f"http://127.0.0.1:{free_port()}/token")
    monkeypatch.setenv("GCPDL_PROJECT", "my-proj")
    code = (
        "import sys, warnings\nwarnings.simplefilter('default')\n"
        "from gcpdl.clients import ClientFactory\nfrom gcpdl.settings import resolve\n"
        "ClientFactory(resolve(), on_notice=lambda m: print('NOTICE', m, file=sys.stderr)).credentials()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for out in (first, second):
        assert "UserWarning" not in out.stderr and "site-packages" not in out.stderr, out.stderr
    assert first.stderr.splitlines() == [
        "NOTICE Your Google login (application-default credentials) names no quota project, so some APIs may "
        "answer \"quota exceeded\" or \"API not enabled\". Fix it once: "
        "gcloud auth application-default set-quota-project my-proj"
    ]
    assert second.stderr == ""


def test_quota_project_notice_goes_through_the_cli_warning(gcp, monkeypatch):
    """Through a real command: one `Warning:` line before the command's own answer."""
    from tests.fixtures.ports import free_port

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    _user_adc(f"http://127.0.0.1:{free_port()}/token")  # refused: status then fails, after the notice
    result = run("status")
    assert result.stderr.splitlines()[0] == (
        "Warning: Your Google login (application-default credentials) names no quota project, so some APIs may "
        "answer \"quota exceeded\" or \"API not enabled\". Fix it once: "
        "gcloud auth application-default set-quota-project test-project"
    )
    assert "quota project" not in run("status").stderr
