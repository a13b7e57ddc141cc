"""A Service Usage API stand-in (serviceusage.googleapis.com/v1), real HTTP on 127.0.0.1.

Just what `gcpdl doctor --fix` uses, answering as the real API does:
- POST /v1/projects/P/services/S:enable -> a long-running Operation ({"name": "operations/..."});
  done at once for a service that is already enabled, else after ``polls_to_enable`` GETs;
- GET /v1/operations/ID -> the operation; when it turns done the service is enabled and
  ``on_enable(service)`` runs (the walkthrough and the tests wire it to the fake Compute
  server's ``api_disabled``, so Compute answers accessNotConfigured until then);
- GET /v1/projects/P/services/S -> {"name", "state": "ENABLED" | "DISABLED"};
- GET /v1/projects (Resource Manager v1 projects.list, what `gcloud projects list` reads; point
  GCPDL_RESOURCEMANAGER_ENDPOINT here too) -> the ACTIVE ones of ``projects``.
Faults: ``deny()`` answers 403 as for a caller without serviceusage.services.enable.
``token_ok`` checks the bearer token (the fake Compute server's tokens), so the real
google-auth credentials are what reach it.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from tests.fakes.loopback import LoopbackServer


class FakeServiceUsage(LoopbackServer):
    thread_name = "fake-serviceusage"

    @property
    def handler(self) -> type:
        return _Handler

    def __init__(self, project: str, project_number: str = "123456789012", on_enable: Callable[[str], None] | None = None,
                 token_ok: Callable[[str], bool] | None = None):
        self.project = project
        self.project_number = project_number
        self.on_enable = on_enable or (lambda service: None)
        self.token_ok = token_ok or (lambda token: bool(token))
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.enabled: set[str] = set()
            self.operations: dict[str, dict[str, Any]] = {}
            self.polls_to_enable = 2
            self.denied = False
            self.requests: list[tuple[str, str]] = []
            self.projects: list[dict[str, str]] = [{"projectId": self.project, "name": "My First Project",
                                                    "projectNumber": self.project_number, "lifecycleState": "ACTIVE"}]
            self._ids = itertools.count(1)

    def deny(self) -> None:
        self.denied = True


    # ---------------------------------------------------------------- the API
    def handle(self, method: str, path: str, auth: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append((method, path))
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
            if not self.token_ok(token):
                return 401, _error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")
            path = path.split("?", 1)[0]
            if path == "/v1/projects" and method == "GET":
                return 200, {"projects": [p for p in self.projects if p.get("lifecycleState") == "ACTIVE"]}
            m = re.fullmatch(r"/v1/projects/([^/]+)/services/([^/:]+)(:enable)?", path)
            if m:
                project, service, enable = m.groups()
                if project not in (self.project, self.project_number):
                    return 403, _error(403, f"Permission denied to get service [{service}]", "PERMISSION_DENIED")
                if not enable and method == "GET":
                    state = "ENABLED" if service in self.enabled else "DISABLED"
                    return 200, {"name": f"projects/{self.project_number}/services/{service}", "state": state}
                if enable and method == "POST":
                    if self.denied:
                        return 403, _error(403, f"Permission denied to enable service [{service}]", "PERMISSION_DENIED",
                                           reason="AUTH_PERMISSION_DENIED")
                    name = f"operations/acat.p2-{self.project_number}-{next(self._ids):04d}"
                    op = {"name": name, "metadata": {"@type": "type.googleapis.com/google.protobuf.Empty"},
                          "_service": service, "_polls": 0 if service in self.enabled else self.polls_to_enable}
                    self.operations[name] = op
                    return 200, self._view(op)
            m = re.fullmatch(r"/v1/(operations/[^/]+)", path)
            if m and method == "GET":
                op = self.operations.get(m.group(1))
                if op is None:
                    return 404, _error(404, f"Operation {m.group(1)} not found.", "NOT_FOUND")
                op["_polls"] -= 1
                return 200, self._view(op)
            return 404, _error(404, f"Method not found: {method} {path}", "NOT_FOUND")

    def _view(self, op: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in op.items() if not k.startswith("_")}
        if op["_polls"] <= 0:
            service = op["_service"]
            if service not in self.enabled:
                self.enabled.add(service)
                self.on_enable(service)
            out["done"] = True
            out["response"] = {"@type": "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse",
                               "service": {"name": f"projects/{self.project_number}/services/{service}", "state": "ENABLED"}}
        return out


def _error(code: int, message: str, status: str, reason: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                           "domain": "serviceusage.googleapis.com"}]
    return {"error": err}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeServiceUsage

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = self.fake.handle(self.command, self.path, self.headers.get("Authorization") or "")
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass
