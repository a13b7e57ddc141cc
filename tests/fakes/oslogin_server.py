"""A stand-in for the identity APIs OS Login needs, on 127.0.0.1 (real HTTP, one server):

- OS Login API v1: ``GET /v1/users/{email}/loginProfile``, ``POST /v1/users/{email}:importSshPublicKey``
  (a first import creates the POSIX account, as the real API does; the response carries the
  login profile);
- Cloud Resource Manager v1 ``POST /v1/projects/{p}:testIamPermissions`` and IAM v1
  ``POST /v1/projects/-/serviceAccounts/{email}:testIamPermissions`` (every permission asked is
  granted unless it is in ``denied``);
- ``POST /tokeninfo`` (form ``access_token``) -> {"email"} for tokens in ``token_emails``;
- for the sshd fixture's AuthorizedKeysCommand (the part of the VM that google_authorized_keys
  plays): ``GET /_test/authorized_keys/{username}`` -> that POSIX user's unexpired keys.

State to inspect or set (``reset()`` before each test): profiles {email: {"username", "uid",
"keys": {fingerprint: {...}}}}, usernames {email: POSIX name a new account gets}, denied
(permissions refused everywhere), project_denied (refused only project-wide),
refuse_login (usernames whose keys the VM side does not see), token_emails, requests
[(method, path, query, body)], fail_import / fail_profile(status, message), now (clock for expiry).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from tests.fakes.loopback import LoopbackServer

EXTERNAL_MESSAGE = ("Login profile is not available: the account is an external user of the organization. "
                    "An organization administrator must grant the user roles/compute.osLoginExternalUser.")


class FakeOsLogin(LoopbackServer):
    thread_name = "fake-oslogin"

    @property
    def handler(self) -> type:
        return _Handler

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.profiles: dict[str, dict[str, Any]] = {}
            self.usernames: dict[str, str] = {}
            self.denied: set[str] = set()
            self.project_denied: set[str] = set()  # refused by Resource Manager only (granted per resource)
            self.refuse_login: set[str] = set()
            self.token_emails: dict[str, str] = {}
            self.requests: list[tuple[str, str, dict[str, str], Any]] = []
            self._import_failures: list[tuple[int, str]] = []
            self._profile_failures: list[tuple[int, str]] = []
            self.now: Callable[[], float] = time.time

    # --- test helpers ------------------------------------------------------------------------
    def fail_import(self, status: int = 403, message: str = EXTERNAL_MESSAGE, times: int = 1) -> None:
        self._import_failures += [(status, message)] * times

    def fail_profile(self, status: int = 403, message: str = EXTERNAL_MESSAGE, times: int = 1) -> None:
        self._profile_failures += [(status, message)] * times

    def imports(self) -> list[tuple[str, dict]]:
        """(email, body) of every importSshPublicKey request."""
        return [(p.split("/v1/users/")[1].split(":")[0], b) for m, p, _, b in self.requests if p.endswith(":importSshPublicKey")]

    def keys(self, email: str) -> list[dict]:
        with self._lock:
            return list((self.profiles.get(email) or {}).get("keys", {}).values())

    def seed(self, email: str, username: str, keys: list[tuple[str, int | None]] = ()) -> None:
        """An account that already has a POSIX user (and keys: (line, expiry µs))."""
        with self._lock:
            prof = self._account(email, username)
            for line, expiry in keys:
                self._add_key(prof, email, line, expiry)

    # --- state ------------------------------------------------------------------------------
    def _account(self, email: str, username: str | None = None) -> dict:
        prof = self.profiles.get(email)
        if prof is None:
            name = username or self.usernames.get(email) or _default_username(email)
            prof = {"username": name, "uid": str(1_000_000 + len(self.profiles)), "keys": {}}
            self.profiles[email] = prof
        return prof

    @staticmethod
    def _add_key(prof: dict, email: str, line: str, expiry: int | None) -> None:
        blob = line.split()[1]
        fp = hashlib.sha256(base64.b64decode(blob)).hexdigest()
        entry = {"key": line, "fingerprint": fp, "name": f"users/{email}/sshPublicKeys/{fp}"}
        if expiry is not None:
            entry["expirationTimeUsec"] = str(expiry)
        prof["keys"][fp] = entry

    def _profile_body(self, email: str) -> dict:
        body: dict[str, Any] = {"name": f"users/{email}"}
        prof = self.profiles.get(email)
        if prof is None:
            return body
        body["posixAccounts"] = [{
            "primary": True, "username": prof["username"], "uid": prof["uid"], "gid": prof["uid"],
            "homeDirectory": f"/home/{prof['username']}", "shell": "/bin/bash", "gecos": "",
            "systemId": "", "accountId": "test-project", "operatingSystemType": "LINUX",
            "name": f"users/{email}/projects/test-project",
        }]
        if prof["keys"]:
            body["sshPublicKeys"] = dict(prof["keys"])
        return body

    def authorized_keys(self, username: str) -> str:
        now_us = self.now() * 1e6
        with self._lock:
            if username in self.refuse_login:
                return ""
            for prof in self.profiles.values():
                if prof["username"] == username:
                    return "".join(k["key"] + "\n" for k in prof["keys"].values()
                                   if "expirationTimeUsec" not in k or int(k["expirationTimeUsec"]) > now_us)
        return ""

    # --- HTTP --------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> tuple[int, str, bytes]:
        parsed = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parsed.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        if path.startswith("/_test/authorized_keys/"):
            return 200, "text/plain", self.authorized_keys(path.rsplit("/", 1)[1]).encode()
        if path == "/tokeninfo" and method == "POST":
            form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            with self._lock:
                self.requests.append((method, path, {}, {"access_token": "<redacted>"}))
                email = self.token_emails.get(form.get("access_token", ""))
            if not email:
                return 400, "application/json", json.dumps({"error": "invalid_token", "error_description": "Invalid Value"}).encode()
            return 200, "application/json", json.dumps({"email": email, "email_verified": "true", "expires_in": "3000"}).encode()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        with self._lock:
            self.requests.append((method, path, query, body))
            if not headers.get("authorization", "").lower().startswith("bearer "):
                return _error(401, "Request is missing required authentication credential.", "UNAUTHENTICATED")
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, str, bytes]:
        m = re.fullmatch(r"/v1/users/([^/:]+)/loginProfile", path)
        if m and method == "GET":
            if self._profile_failures:
                status, message = self._profile_failures.pop(0)
                return _error(status, message, "PERMISSION_DENIED" if status == 403 else "INTERNAL")
            return _ok(self._profile_body(m.group(1)))
        m = re.fullmatch(r"/v1/users/([^/:]+):importSshPublicKey", path)
        if m and method == "POST":
            return self._import(m.group(1), query, body)
        m = re.fullmatch(r"/v1/projects/([^/:]+):testIamPermissions", path)  # Resource Manager
        if m and method == "POST":
            return self._test_permissions(body, self.project_denied)
        m = re.fullmatch(r"/v1/projects/[^/]+/serviceAccounts/([^/:]+):testIamPermissions", path)  # IAM
        if m and method == "POST":
            return self._test_permissions(body)
        return _error(404, f"Method not found: {method} {path}", "NOT_FOUND")

    def _import(self, email: str, query: dict, body: Any) -> tuple[int, str, bytes]:
        if set(query) - {"projectId", "regions"}:
            return _error(400, f"Invalid JSON payload received. Unknown name {sorted(query)}", "INVALID_ARGUMENT")
        if not isinstance(body, dict) or set(body) - {"key", "expirationTimeUsec"}:
            return _error(400, f"Invalid JSON payload received. Unknown name in {sorted(body or {})}", "INVALID_ARGUMENT")
        line = body.get("key") or ""
        if not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+) [A-Za-z0-9+/=]+( .*)?$", line.strip()):
            return _error(400, "Invalid SSH public key.", "INVALID_ARGUMENT")
        expiry = body.get("expirationTimeUsec")
        if expiry is not None and not (isinstance(expiry, str) and expiry.isdigit()):
            return _error(400, "Invalid value at 'ssh_public_key.expiration_time_usec'", "INVALID_ARGUMENT")
        if self._import_failures:
            status, message = self._import_failures.pop(0)
            return _error(status, message, "PERMISSION_DENIED" if status == 403 else "INTERNAL")
        prof = self._account(email)
        self._add_key(prof, email, line.strip(), int(expiry) if expiry else None)
        return _ok({"loginProfile": self._profile_body(email)})

    def _test_permissions(self, body: Any, also_denied: set[str] = frozenset()) -> tuple[int, str, bytes]:
        asked = list((body or {}).get("permissions") or [])
        granted = [p for p in asked if p not in self.denied and p not in also_denied]
        return _ok({"permissions": granted} if granted else {})


def _default_username(email: str) -> str:
    if email.endswith(".gserviceaccount.com"):
        return "sa_" + str(int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10**21)
    return re.sub(r"[^a-z0-9]", "_", email.lower())[:32]


def _ok(data: dict) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(data).encode()


def _error(code: int, message: str, status: str) -> tuple[int, str, bytes]:
    return code, "application/json", json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOsLogin

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, ctype, data = self.fake.handle(self.command, self.path, headers, raw)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass
