"""A strict fake of the Compute Engine v1 REST API on 127.0.0.1, for the real google-cloud-compute
client (transport="rest") and plain AuthorizedSession readers.

- Routing and body validation come from the discovery document (compute_discovery.py), so an
  unknown route 404s and an unknown field, wrong type or bad enum is a 400 like the real API's.
- The API's own rules are enforced with its error shapes: RFC 1035 names, GPU needs
  onHostMaintenance=TERMINATE, accelerator offered in the zone and within maximumCardsPerInstance,
  machine type exists in the zone, attached GPUs only on N1, boot disk not smaller than its image,
  409 on duplicates, 412 on stale fingerprints, project and regional GPU quotas.
- Mutations return Operations that advance over polls (``operation_polls``); instances go
  PROVISIONING -> STAGING -> RUNNING, STOPPING -> TERMINATED.
- Faults are injectable per test (stockouts, quota, disabled API/billing, permission denied,
  missing project, fail_next, latency, slow operations, preemption).
- ``POST /token`` mints access tokens for the session's service-account key; every API request
  must carry ``Authorization: Bearer`` (a minted token, or a JWT self-signed with that key,
  which is what the client library sends when it uses always_use_jwt_access).

Timestamps follow the real API: RFC 3339 with milliseconds in America/Los_Angeles' offset, from a
settable clock (``fake.now`` / ``fake.advance``), and self links point at www.googleapis.com as the
real API's do whatever endpoint was called.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_discovery import Route, discovery, validate_body

LINK = "https://www.googleapis.com/compute/v1/"
NAME_RE = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
ACTIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "REPAIRING")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
HTTP_REASONS = {400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 409: "CONFLICT", 429: "TOO MANY REQUESTS",
                500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}
RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
              503: "UNAVAILABLE"}

try:
    from zoneinfo import ZoneInfo

    _PACIFIC: Any = ZoneInfo("America/Los_Angeles")
except Exception:  # pragma: no cover - no tzdata: fall back to a fixed offset
    _PACIFIC = timezone(timedelta(hours=-8))


def rfc3339(dt: datetime) -> str:
    """The real API's format: '2026-11-25T05:41:55.123-08:00'."""
    return dt.astimezone(_PACIFIC).isoformat(timespec="milliseconds")


# --- errors ----------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str = "invalid", domain: str = "global",
                 details: list | None = None, status: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.body: dict = {"error": {"code": code, "message": message,
                                     "errors": [{"message": message, "domain": domain, "reason": reason, **(extra or {})}]}}
        if status:
            self.body["error"]["status"] = status
        if details:
            self.body["error"]["details"] = details


def invalid_field(field_path: str, value: Any, why: str) -> ApiError:
    return ApiError(400, f"Invalid value for field '{field_path}': '{value}'. {why}")


def not_found(resource_path: str) -> ApiError:
    return ApiError(404, f"The resource '{resource_path}' was not found", reason="notFound")


@dataclass
class OpError:
    """How an operation ends in error (the body of Operation.error plus the HTTP mapping)."""

    code: str
    message: str
    http_status: int = 400
    details: list = field(default_factory=list)

    def body(self) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.details:
            err["errorDetails"] = self.details
        return {"errors": [err]}


class OpFailure(Exception):
    """Raised inside a mutation to end its operation in error instead of answering 4xx/5xx."""

    def __init__(self, error: OpError):
        super().__init__(error.message)
        self.error = error


# --- state records ---------------------------------------------------------------------------

@dataclass
class LoggedRequest:
    method: str
    path: str  # e.g. /compute/v1/projects/p/zones/z/instances
    query: dict[str, str]
    body: Any  # parsed JSON body, or None
    method_id: str | None = None  # e.g. compute.instances.insert (None for unknown routes)


@dataclass
class Operation:
    body: dict
    polls_left: int
    scope: tuple[str, str | None]  # ("zones", zone) | ("regions", region) | ("global", None)
    on_done: Callable[[], None] | None = None
    on_progress: Callable[[], None] | None = None
    error: OpError | None = None
    ready_at: float | None = None  # time.monotonic() when DONE, for time-based operations


@dataclass
class Stockout:
    code: str = "ZONE_RESOURCE_POOL_EXHAUSTED"
    zones_available: list[str] | None = None
    sync_503: bool = False


@dataclass
class FailRule:
    status: int
    times: int
    method: re.Pattern
    path: re.Pattern
    after: bool = False  # process the request, then answer the error (a lost response)


@dataclass
class Ctx:
    route: Route
    project: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any


# --- the fake --------------------------------------------------------------------------------

class FakeCompute:
    """State, faults and the HTTP server. Thread-safe: every request runs under one lock."""

    def __init__(self, key_dir: Path | str | None = None, project: str = "test-project"):
        self.project = project
        self.project_number = "123456789012"
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._tokens: set[str] = set()
        self._jwt_ok: set[str] = set()
        self.key_file: Path | None = None
        self.client_email = f"gcpdl-tests@{project}.iam.gserviceaccount.com"
        self._public_pem: bytes | None = None
        self._private_pem: str | None = None
        self._key_id = secrets.token_hex(20)
        self._key_dir = Path(key_dir) if key_dir else None
        self._ids = itertools.count(4_000_000_000_000_000_000 + secrets.randbelow(10**15))
        self._handlers = self._handler_table()
        self.reset()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "FakeCompute":
        discovery()  # index the 4.9 MB document once, before the first request
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-compute", daemon=True)
        self._thread.start()
        if self._key_dir is not None:
            self.write_key_file(self._key_dir / "service-account.json")
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def write_key_file(self, path: Path) -> Path:
        """A service-account JSON key whose token_uri is this server (one RSA key per fake)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        if self._private_pem is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._private_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
            self._public_pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        info = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": self._key_id,
            "private_key": self._private_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": f"{self.url}/auth",
            "token_uri": self.token_uri,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2))
        path.chmod(0o600)
        self.key_file = path
        return path

    def reset(self) -> None:
        """Back to an empty project with default quotas, no faults, an empty log, the real clock."""
        with self._lock:
            self.instances_by_key: dict[tuple[str, str], dict] = {}
            self.disks_by_key: dict[tuple[str, str], dict] = {}
            self.firewalls_by_name: dict[str, dict] = {}
            self.operations: dict[str, Operation] = {}
            self.guest_attrs: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
            self.project_quotas: dict[str, list[float]] = {m: [lim, 0.0] for m, lim in cat.PROJECT_QUOTAS.items()}
            self.region_quotas: dict[str, dict[str, list[float]]] = {
                r: {m: [lim, 0.0] for m, lim in cat.REGION_QUOTAS.items()} for r in cat.REGIONS
            }
            self.extra_images: dict[str, dict[str, int]] = {}
            self.stockouts: dict[str, Stockout] = {}
            self.fail_rules: list[FailRule] = []
            self.denied: set[str] = set()
            self.api_disabled = False
            self.billing_disabled = False
            self.project_is_missing = False
            self.latency = 0.0
            self.method_latency: dict[str, float] = {}  # e.g. {"compute.instances.insert": 0.8}
            self.operation_polls = 1
            # > 0: operations are DONE after this many real seconds instead of after N polls,
            # and wait blocks until then (at most wait_max); for the `up` benchmark
            self.operation_seconds = 0.0
            self.wait_max = 2.0
            self._request_ids: dict[tuple[str, str, str], str] = {}
            self.omit_http_error_status = False
            # "auto": GPUS_ALL_REGIONS is a synchronous 403, regional GPU quota ends the operation
            # in QUOTA_EXCEEDED (both seen from the real API); "sync" / "operation" force one.
            self.quota_error_mode = "auto"
            self.default_nat_ip = "127.0.0.1"
            self.nat_ips: dict[str, str] = {}  # instance name -> natIP for instances inserted later
            self.start_nat_ip: str | None = None  # natIP a started VM gets (None: keeps its address)
            self.require_auth = True
            self.requests: list[LoggedRequest] = []
            self.token_requests = 0
            self.auth_seen: dict[str, int] = {"token": 0, "self_signed_jwt": 0}
            self.now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
            self._skew = 0.0
            self._ip_counter = itertools.count(2)

    # ---------------------------------------------------------------- clock
    def clock(self) -> datetime:
        return self.now() + timedelta(seconds=self._skew)

    def advance(self, seconds: float) -> None:
        self._skew += seconds

    def _ts(self) -> str:
        return rfc3339(self.clock())

    # ---------------------------------------------------------------- fault injection
    def stockout(self, zone: str, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", zones_available: list[str] | None = None,
                 sync_503: bool = False) -> None:
        self.stockouts[zone] = Stockout(code, zones_available, sync_503)

    def set_quota(self, metric: str, limit: float, region: str | None = None, usage: float = 0) -> None:
        """Set a quota's limit and its usage by things outside this fake (region None: project)."""
        table = self.project_quotas if region is None else self.region_quotas.setdefault(region, {})
        table[metric] = [float(limit), float(usage)]

    def disable_api(self) -> None:
        self.api_disabled = True

    def disable_billing(self) -> None:
        self.billing_disabled = True

    def deny(self, permission: str) -> None:
        self.denied.add(permission)

    def project_missing(self) -> None:
        self.project_is_missing = True

    def fail_next(self, status: int, times: int = 1, method: str = ".*", path: str = ".*", after: bool = False) -> None:
        """The next ``times`` requests whose HTTP method and path (re.search) match answer ``status``.

        ``after=True``: the request takes effect first and only the reply is lost (the case
        requestId exists for)."""
        self.fail_rules.append(FailRule(status, times, re.compile(method), re.compile(path), after))

    def add_image_family(self, project: str, family: str, disk_size_gb: int = 50) -> None:
        self.extra_images.setdefault(project, {})[family] = disk_size_gb

    def preempt(self, zone: str, name: str) -> dict:
        """A spot VM is reclaimed: TERMINATED now (deleted, with its auto-delete disks, when its
        instanceTerminationAction is DELETE), and a compute.instances.preempted operation."""
        with self._lock:
            inst = self._get_instance(self.project, zone, name)
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = self._ts()
            if inst.get("scheduling", {}).get("instanceTerminationAction") == "DELETE":
                self._remove_instance(zone, inst)
            op = self._new_op(self.project, ("zones", zone), "compute.instances.preempted", inst, polls=0, user="system")
            op.body["statusMessage"] = "Instance was preempted."
            return copy.deepcopy(op.body)

    # ---------------------------------------------------------------- seeding and inspection
    def add_instance(self, name: str, zone: str = "us-central1-a", status: str = "RUNNING", nat_ip: str | None = "127.0.0.1",
                     labels: dict | None = None, metadata: dict | None = None, machine_type: str = "n1-standard-4",
                     gpu: tuple[str, int] | str | None = ("nvidia-tesla-t4", 1), guest_attributes: dict | None = None,
                     creation: datetime | None = None, last_start: datetime | None = None, last_stop: datetime | None = None,
                     spot: bool = False, disk_size_gb: int = 100, tags: list[str] | None = None) -> dict:
        """Seed an instance (and its boot disk) directly, bypassing validation and operations.

        ``metadata`` None means {"enable-guest-attributes": "TRUE"}. ``gpu`` is ignored for
        machine types with built-in GPUs (g2/a2/a3), which always carry theirs.
        """
        with self._lock:
            if isinstance(gpu, str):
                gpu = (gpu, 1)
            builtin = cat.MACHINE_TYPES.get(machine_type, (0, 0, None))[2]
            accs = [builtin] if builtin else ([gpu] if gpu else [])
            md = {"enable-guest-attributes": "TRUE"} if metadata is None else metadata
            body: dict = {
                "name": name,
                "machineType": f"zones/{zone}/machineTypes/{machine_type}",
                "labels": dict(labels or {}),
                "metadata": {"items": [{"key": k, "value": v} for k, v in md.items()]},
                "scheduling": {"onHostMaintenance": "TERMINATE" if accs or spot else "MIGRATE"},
                "guestAccelerators": [{"acceleratorType": f"zones/{zone}/acceleratorTypes/{t}", "acceleratorCount": c}
                                      for t, c in accs],
                "disks": [{"boot": True, "autoDelete": True, "initializeParams": {"diskSizeGb": str(disk_size_gb)}}],
                "networkInterfaces": [{"accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}]
                if nat_ip else [{}],
                "tags": {"items": list(tags or [])},
            }
            if spot:
                body["scheduling"].update(provisioningModel="SPOT", instanceTerminationAction="STOP")
            inst = self._materialize(self.project, zone, body, nat_ip=nat_ip, disk_image_gb=None)
            inst["status"] = status
            if creation:
                inst["creationTimestamp"] = rfc3339(creation)
            if status in ("RUNNING", "STOPPING"):
                inst["lastStartTimestamp"] = rfc3339(last_start or creation or self.clock())
            elif last_start:
                inst["lastStartTimestamp"] = rfc3339(last_start)
            if last_stop:
                inst["lastStopTimestamp"] = rfc3339(last_stop)
            elif status == "TERMINATED":
                inst["lastStopTimestamp"] = self._ts()
            for ns, mapping in (guest_attributes or {}).items():
                self.set_guest_attributes(zone, name, ns, mapping)
            return copy.deepcopy(inst)

    def instance(self, zone: str, name: str) -> dict | None:
        with self._lock:
            inst = self.instances_by_key.get((zone, name))
            return copy.deepcopy(inst) if inst else None

    def instances(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(i) for _, i in sorted(self.instances_by_key.items())]

    def disks(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(d) for _, d in sorted(self.disks_by_key.items())]

    def firewalls(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(f) for _, f in sorted(self.firewalls_by_name.items())]

    def set_guest_attributes(self, zone: str, instance: str, namespace: str, mapping: dict[str, str]) -> None:
        with self._lock:
            self.guest_attrs.setdefault((zone, instance), {}).setdefault(namespace, {}).update(mapping)

    def check(self, method: str, path: str, body: Any = None) -> str | None:
        """Would the API accept this request's shape? Routing, path parameters, query and body
        schema only (no state, no auth): the error message, or None. For dry-run plans."""
        parsed = urllib.parse.urlsplit(path)
        rel = parsed.path.split("/compute/v1/", 1)[-1]
        match = discovery().match(method, rel)
        if match is None:
            return f"No such method: {method} {parsed.path}"
        route, params = match
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        ctx = Ctx(route, params.get("project", ""), params, query, body)
        try:
            self._check_shape(ctx)
        except ApiError as e:
            return e.message
        return None

    def calls(self, method_id: str) -> list[LoggedRequest]:
        """Logged requests for one API method, e.g. calls("compute.instances.insert")."""
        return [r for r in self.requests if r.method_id == method_id]

    # ---------------------------------------------------------------- HTTP entry point
    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[int, dict, bytes]:
        """One request -> (status, headers, body). Runs outside the lock only for latency."""
        parsed = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parsed.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        if path == "/token" and method == "POST":
            with self._lock:
                return self._token(raw_body)
        prefix = "/compute/v1/"
        match = discovery().match(method, path[len(prefix):]) if path.startswith(prefix) else None
        body: Any = None
        body_error = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError as e:
                body_error = e
        with self._lock:
            self.requests.append(LoggedRequest(method, path, query, body if body_error is None else raw_body.decode("utf-8", "replace"),
                                               match[0].id if match else None))
        if match is None:
            return _html_404(path)
        route, params = match
        delay = self.method_latency.get(route.id, self.latency)
        if delay:
            time.sleep(delay)
        if route.method == "wait":
            self._block_for_wait(params.get("operation", ""))
        with self._lock:
            after: FailRule | None = None
            try:
                if self.require_auth:
                    self._check_auth(headers.get("authorization", ""))
                after = self._check_fail_rules(method, path)
                if body_error is not None:
                    raise ApiError(400, f"Invalid JSON payload received. {body_error}", status="INVALID_ARGUMENT")
                ctx = Ctx(route, params.get("project", ""), params, query, body)
                status, out = self._dispatch_once(ctx)
                if after is not None:
                    raise _injected(after.status)
            except ApiError as e:
                status, out = e.code, e.body
        data = json.dumps(out).encode()
        return status, {"Content-Type": "application/json; charset=UTF-8"}, data

    # ---------------------------------------------------------------- auth
    def _token(self, raw_body: bytes) -> tuple[int, dict, bytes]:
        from google.auth import jwt

        self.token_requests += 1
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw_body.decode()).items()}

        def fail(desc: str) -> tuple[int, dict, bytes]:
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": "invalid_grant", "error_description": desc}).encode()

        if form.get("grant_type") != JWT_BEARER or "assertion" not in form:
            return fail("Invalid grant_type.")
        try:
            # google-auth always sets aud to Google's own token endpoint, whatever token_uri says
            claims = jwt.decode(form["assertion"], certs={self._key_id: self._public_pem},
                                audience=[self.token_uri, "https://oauth2.googleapis.com/token"])
        except Exception:
            return fail("Invalid JWT Signature.")
        if claims.get("iss") != self.client_email:
            return fail("Invalid email or User ID")
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._tokens.add(token)
        out = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(out).encode()

    def _check_auth(self, header: str) -> None:
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token in self._tokens:
            self.auth_seen["token"] += 1
            return
        if token and token not in self._jwt_ok and token.count(".") == 2 and self._public_pem:
            from google.auth import jwt

            try:
                jwt.decode(token, certs={self._key_id: self._public_pem}, verify=True, audience=None)
                self._jwt_ok.add(token)
            except Exception:
                pass
        if token in self._jwt_ok:
            self.auth_seen["self_signed_jwt"] += 1
            return
        if token:
            msg = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                   "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.")
        else:
            msg = ("Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
                   "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.")
        raise ApiError(401, msg, reason="authError" if token else "required", extra={"location": "Authorization", "locationType": "header"},
                       status="UNAUTHENTICATED")

    def _check_fail_rules(self, method: str, path: str) -> FailRule | None:
        """Raise an injected error now, or return the rule that fails the reply after processing."""
        for rule in self.fail_rules:
            if rule.times > 0 and rule.method.search(method) and rule.path.search(path):
                rule.times -= 1
                if rule.after:
                    return rule
                raise _injected(rule.status)
        return None

    def _dispatch_once(self, ctx: Ctx) -> tuple[int, dict]:
        """requestId makes a retried mutation return the first attempt's operation, as the real
        API does (so a retry after a lost response does not hit alreadyExists)."""
        rid = ctx.query.get("requestId")
        key = (ctx.route.id, ctx.project, rid)
        if rid and key in self._request_ids:
            op = self.operations.get(self._request_ids[key])
            if op is not None:
                return self._op_response(op)
        status, out = self._dispatch(ctx)
        if rid and out.get("kind") == "compute#operation":
            self._request_ids[key] = out["name"]
        return status, out

    def _block_for_wait(self, name: str) -> None:
        """zoneOperations.wait on a time-based operation sleeps (outside the lock) until it is
        due, or at most wait_max seconds, like the real wait's bounded block."""
        with self._lock:
            op = self.operations.get(name)
            due = op.ready_at if op is not None and op.body["status"] != "DONE" else None
        if due is not None:
            time.sleep(max(0.0, min(due - time.monotonic(), self.wait_max)))

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self, ctx: Ctx) -> tuple[int, dict]:
        route = ctx.route
        public_image = route.resource == "images" and ctx.project in self._image_projects()
        self._check_shape(ctx, before_body=lambda: self._project_checks(ctx, api_only=public_image))
        handler = self._handlers.get(route.id)
        if handler is None:
            raise ApiError(501, f"fake compute: {route.id} is not implemented", reason="notImplemented")
        return handler(ctx)

    def _check_shape(self, ctx: Ctx, before_body: Callable[[], None] | None = None) -> None:
        route = ctx.route
        disc_params = discovery().doc["resources"][route.resource]["methods"][route.method]["parameters"]
        for name in ctx.query:
            if name not in route.query_params and name not in discovery().system_params:
                raise ApiError(400, f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query parameter. '
                                    f"Field '{name}' could not be found in request message.", status="INVALID_ARGUMENT")
        for name, value in ctx.params.items():
            pattern = disc_params.get(name, {}).get("pattern")
            if pattern and not re.fullmatch(pattern, value):
                raise ApiError(400, f"Invalid value for field '{name}': '{value}'. Must be a match of regex '{pattern}'")
        if before_body:
            before_body()
        if route.request_schema:
            if ctx.body is None:
                ctx.body = {}
            root = re.sub(r"(?<!^)(?=[A-Z])", "_", route.request_schema).lower()
            violations = validate_body(ctx.body, route.request_schema, root)
            if violations:
                first = violations[0]
                raise ApiError(400, first.message, status="INVALID_ARGUMENT", details=[{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": v.field, "description": v.message} for v in violations],
                }])

    def _project_checks(self, ctx: Ctx, api_only: bool = False) -> None:
        p = ctx.project
        if self.api_disabled:
            msg = (f"Compute Engine API has not been used in project {self.project_number} before or it is disabled. Enable it by "
                   f"visiting https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project={self.project_number} "
                   "then retry. If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.")
            raise ApiError(403, msg, reason="accessNotConfigured", domain="usageLimits", status="PERMISSION_DENIED",
                           extra={"extendedHelp": "https://console.developers.google.com"}, details=[
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
                     "metadata": {"service": "compute.googleapis.com", "consumer": f"projects/{self.project_number}",
                                  "serviceTitle": "Compute Engine API", "containerInfo": self.project_number,
                                  "activationUrl": f"https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project={self.project_number}"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                     "message": f"Compute Engine API has not been used in project {self.project_number} before or it is disabled."},
                    {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                        {"description": "Google developers console API activation",
                         "url": f"https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project={self.project_number}"}]},
                ])
        if api_only:
            return
        if self.project_is_missing or p != self.project:
            raise not_found(f"projects/{p}")
        if self.billing_disabled:
            msg = (f"This API method requires billing to be enabled. Please enable billing on project #{self.project_number} by "
                   f"visiting https://console.developers.google.com/billing/enable?project={self.project_number} then retry. If you "
                   "enabled billing for this project recently, wait a few minutes for the action to propagate to our systems and retry.")
            raise ApiError(403, msg, reason="accessNotConfigured", domain="usageLimits", status="PERMISSION_DENIED", details=[
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "BILLING_DISABLED", "domain": "googleapis.com",
                 "metadata": {"service": "compute.googleapis.com", "consumer": f"projects/{self.project_number}"}},
            ])
        if self.denied:
            perm = _permission(ctx.route)
            if perm in self.denied:
                raise ApiError(403, f"Required '{perm}' permission for '{_resource_path(ctx)}'", reason="forbidden")

    def _image_projects(self) -> set[str]:
        return set(cat.IMAGE_FAMILIES) | set(self.extra_images)

    def _handler_table(self) -> dict[str, Callable[[Ctx], tuple[int, dict]]]:
        h = {
            "compute.instances.insert": self._instances_insert,
            "compute.instances.get": self._instances_get,
            "compute.instances.list": self._instances_list,
            "compute.instances.aggregatedList": self._instances_aggregated,
            "compute.instances.delete": self._instances_delete,
            "compute.instances.start": self._instances_start,
            "compute.instances.stop": self._instances_stop,
            "compute.instances.setMetadata": self._instances_set_metadata,
            "compute.instances.setLabels": self._instances_set_labels,
            "compute.instances.setScheduling": self._instances_set_scheduling,
            "compute.instances.setTags": self._instances_set_tags,
            "compute.instances.getGuestAttributes": self._instances_guest_attributes,
            "compute.firewalls.insert": self._firewalls_insert,
            "compute.firewalls.get": self._firewalls_get,
            "compute.firewalls.list": self._firewalls_list,
            "compute.firewalls.patch": self._firewalls_patch,
            "compute.firewalls.update": self._firewalls_update,
            "compute.firewalls.delete": self._firewalls_delete,
            "compute.disks.insert": self._disks_insert,
            "compute.disks.get": self._disks_get,
            "compute.disks.list": self._disks_list,
            "compute.disks.delete": self._disks_delete,
            "compute.disks.aggregatedList": self._disks_aggregated,
            "compute.acceleratorTypes.get": self._accel_get,
            "compute.acceleratorTypes.list": self._accel_list,
            "compute.acceleratorTypes.aggregatedList": self._accel_aggregated,
            "compute.machineTypes.get": self._mt_get,
            "compute.machineTypes.list": self._mt_list,
            "compute.machineTypes.aggregatedList": self._mt_aggregated,
            "compute.images.getFromFamily": self._images_from_family,
            "compute.images.get": self._images_get,
            "compute.zones.get": self._zones_get,
            "compute.zones.list": self._zones_list,
            "compute.regions.get": self._regions_get,
            "compute.regions.list": self._regions_list,
            "compute.projects.get": self._projects_get,
            "compute.zoneOperations.get": self._op_get,
            "compute.zoneOperations.wait": self._op_wait,
            "compute.zoneOperations.list": self._op_list,
            "compute.zoneOperations.delete": self._op_delete,
            "compute.globalOperations.get": self._op_get,
            "compute.globalOperations.wait": self._op_wait,
            "compute.globalOperations.list": self._op_list,
            "compute.globalOperations.delete": self._op_delete,
            "compute.globalOperations.aggregatedList": self._op_aggregated,
            "compute.regionOperations.get": self._op_get,
            "compute.regionOperations.wait": self._op_wait,
            "compute.regionOperations.list": self._op_list,
            "compute.regionOperations.delete": self._op_delete,
            "compute.networks.get": self._networks_get,
        }
        return h

    # ---------------------------------------------------------------- helpers
    def _link(self, project: str, *parts: str) -> str:
        return LINK + "/".join(["projects", project, *parts])

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _fingerprint(self) -> str:
        return base64.b64encode(secrets.token_bytes(8)).decode()

    def _check_zone(self, project: str, zone: str) -> str:
        region = _region_of(zone)
        if zone not in cat.REGIONS.get(region, []):
            raise ApiError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.")
        return region

    def _get_instance(self, project: str, zone: str, name: str) -> dict:
        inst = self.instances_by_key.get((zone, name))
        if inst is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def _new_op(self, project: str, scope: tuple[str, str | None], op_type: str, target: dict | None, *,
                target_link: str | None = None, polls: int | None = None, user: str | None = None,
                on_done: Callable[[], None] | None = None, on_progress: Callable[[], None] | None = None,
                error: OpError | None = None) -> Operation:
        now = self.clock()
        name = f"operation-{int(now.timestamp() * 1000)}-{secrets.token_hex(7)[:13]}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        kind, where = scope
        base = self._link(project, *(("global",) if kind == "global" else (kind, where)))
        body: dict = {
            "kind": "compute#operation",
            "id": self._new_id(),
            "name": name,
            "operationType": op_type,
            "targetLink": target_link or (target or {}).get("selfLink", ""),
            "targetId": (target or {}).get("id", self._new_id()),
            "status": "RUNNING",
            "user": user or self.client_email,
            "progress": 0,
            "insertTime": rfc3339(now),
            "startTime": rfc3339(now),
            "selfLink": f"{base}/operations/{name}",
        }
        if kind == "zones":
            body["zone"] = self._link(project, "zones", where or "")
        elif kind == "regions":
            body["region"] = self._link(project, "regions", where or "")
        op = Operation(body, self.operation_polls if polls is None else polls, scope, on_done, on_progress, error)
        if polls is None and self.operation_seconds > 0:
            op.ready_at = time.monotonic() + self.operation_seconds
            op.polls_left = 1
        self.operations[name] = op
        if op.polls_left <= 0:
            self._finish(op)
        return op

    def _finish(self, op: Operation) -> None:
        if op.body["status"] == "DONE":
            return
        if op.error is None and op.on_done:
            try:
                op.on_done()
            except OpFailure as f:
                op.error = f.error
        op.body.update(status="DONE", progress=100, endTime=self._ts())
        if op.error:
            op.body["error"] = op.error.body()
            if not self.omit_http_error_status:
                op.body["httpErrorStatusCode"] = op.error.http_status
                op.body["httpErrorMessage"] = HTTP_REASONS.get(op.error.http_status, "ERROR")

    def _poll(self, op: Operation) -> None:
        if op.body["status"] == "DONE":
            return
        if op.ready_at is not None:
            if time.monotonic() >= op.ready_at:
                self._finish(op)
            elif op.on_progress:
                op.on_progress()
            return
        op.polls_left -= 1
        if op.polls_left <= 0:
            self._finish(op)
        elif op.on_progress:
            op.on_progress()

    def _advance_target(self, target_link: str) -> None:
        """Reading an instance counts as a poll of its pending operation, so code that polls the
        instance (not the operation) still sees PROVISIONING -> STAGING -> RUNNING."""
        for op in list(self.operations.values()):
            if op.body["status"] != "DONE" and op.body["targetLink"] == target_link:
                self._poll(op)

    def _op_response(self, op: Operation) -> tuple[int, dict]:
        return 200, copy.deepcopy(op.body)

    # ---------------------------------------------------------------- instances
    def _instances_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, body = ctx.project, ctx.params["zone"], ctx.body
        region = self._check_zone(project, zone)
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if (zone, name) in self.instances_by_key:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                           reason="alreadyExists")
        _check_labels(body.get("labels"), "resource.labels")
        _check_metadata(body.get("metadata"), "resource.metadata")
        if not body.get("networkInterfaces"):
            raise ApiError(400, "Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required.")
        mt_name = self._machine_type_of(project, zone, body.get("machineType"))
        builtin = cat.MACHINE_TYPES[mt_name][2]
        accs = self._accelerators(project, zone, mt_name, builtin, body.get("guestAccelerators") or [])
        sched = body.get("scheduling") or {}
        spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
        ohm = sched.get("onHostMaintenance") or ("TERMINATE" if spot else "MIGRATE")
        if spot and ohm != "TERMINATE":
            raise invalid_field("resource.scheduling.onHostMaintenance", ohm,
                                "Scheduling must have preemptible be false when OnHostMaintenance isn't TERMINATE.")
        if accs and ohm != "TERMINATE":
            raise ApiError(400, "Instances with guest accelerators do not support live migration.", reason="badRequest")
        if sched.get("instanceTerminationAction") and not spot:
            raise invalid_field("resource.scheduling.instanceTerminationAction", sched["instanceTerminationAction"],
                                "Instance termination action can only be set for SPOT instances.")
        image_gb = self._check_disks(project, zone, name, body.get("disks") or [])
        sync_err, op_err = self._capacity_errors(project, zone, region, accs, spot, mt_name)
        if sync_err:
            raise sync_err
        if op_err:
            # the real API answers with a RUNNING operation that ends in error; nothing is created
            op = self._new_op(project, ("zones", zone), "insert", None,
                              target_link=self._link(project, "zones", zone, "instances", name), error=op_err)
            return self._op_response(op)
        inst = self._materialize(project, zone, body, nat_ip=self.nat_ips.get(name, self.default_nat_ip), disk_image_gb=image_gb)
        inst["status"] = "PROVISIONING"

        def progress() -> None:
            if inst["status"] == "PROVISIONING":
                inst["status"] = "STAGING"

        def done() -> None:
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = self._ts()
            for d in self._instance_disks(zone, inst):
                d["status"] = "READY"

        op = self._new_op(project, ("zones", zone), "insert", inst, on_done=done, on_progress=progress)
        return self._op_response(op)

    def _machine_type_of(self, project: str, zone: str, ref: str | None) -> str:
        if not ref:
            raise ApiError(400, "Invalid value for field 'resource.machineType': ''. Machine type must be specified.")
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/([^/]+)/)?zones/([^/]+)/machineTypes/([^/]+)", ref)
        if not m:
            raise invalid_field("resource.machineType", ref, "Must be a URL to a valid Compute resource of the correct type.")
        _, mzone, mt = m.groups()
        if mzone != zone or mt not in cat.machine_types_in_zone(zone):
            raise invalid_field("resource.machineType", ref, f"Machine type with name '{mt}' does not exist in zone '{zone}'.")
        return mt

    def _accelerators(self, project: str, zone: str, mt: str, builtin: tuple[str, int] | None, requested: list[dict]) -> list[tuple[str, int]]:
        if builtin:
            if requested:
                want = []
                for a in requested:
                    t = (a.get("acceleratorType") or "").rsplit("/", 1)[-1]
                    want.append((t, int(a.get("acceleratorCount", 0) or 0)))
                if want != [builtin]:
                    raise ApiError(400, f"[{mt}, {want[0][0]}] features are not compatible for creating instance.")
            return [builtin]
        out = []
        family = mt.split("-", 1)[0]
        for i, a in enumerate(requested):
            ref = a.get("acceleratorType") or ""
            fld = f"resource.guestAccelerators[{i}].acceleratorType"
            m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/([^/]+)/)?zones/([^/]+)/acceleratorTypes/([^/]+)", ref)
            if not m:
                raise invalid_field(fld, ref, "Must be a URL to a valid Compute resource of the correct type.")
            azone, atype = m.group(2), m.group(3)
            if azone != zone or atype not in cat.ZONE_ACCELERATORS.get(zone, []):
                # what gcloud users see: "Could not fetch resource: - The resource
                # 'projects/p/zones/us-west1-b/acceleratorTypes/nvidia-tesla-p4' was not found"
                raise not_found(f"projects/{project}/zones/{azone}/acceleratorTypes/{atype}")
            count = int(a.get("acceleratorCount", 0) or 0)
            maximum = cat.ACCELERATORS[atype][1]
            if count < 1 or count > maximum:
                raise invalid_field(f"resource.guestAccelerators[{i}].acceleratorCount", count,
                                    f"Accelerator count must be between 1 and {maximum} for accelerator type '{atype}'.")
            if atype not in cat.ATTACHABLE.get(family, set()):
                raise ApiError(400, f"[{mt}, {atype}] features are not compatible for creating instance.")
            out.append((atype, count))
        return out

    def _image(self, ref: str) -> tuple[str, str, int]:
        """(project, image name, diskSizeGb) for an image or image-family URL, or 404."""
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?projects/([^/]+)/global/images/(family/)?([^/]+)", ref or "")
        if not m:
            raise not_found(ref)
        proj, is_family, name = m.groups()
        fams = {**cat.IMAGE_FAMILIES.get(proj, {}), **self.extra_images.get(proj, {})}
        if is_family:
            size = fams.get(name)
            if size is None and proj == "deeplearning-platform-release" and name.startswith(cat.DLVM_FAMILY_PREFIXES):
                size = cat.DLVM_DEFAULT_GB
            if size is None:
                raise not_found(f"projects/{proj}/global/images/family/{name}")
            return proj, f"{name}-v20261101", size
        for fam, size in fams.items():
            if name.startswith(fam + "-v"):
                return proj, name, size
        raise not_found(f"projects/{proj}/global/images/{name}")

    def _check_disks(self, project: str, zone: str, name: str, disks: list[dict]) -> int | None:
        boots = [d for d in disks if d.get("boot")]
        if len(boots) != 1:
            raise ApiError(400, "Invalid value for field 'resource.disks': ''. Boot disk must be specified." if not boots
                           else "Invalid value for field 'resource.disks': ''. Only one boot disk may be specified.")
        image_gb = None
        for i, d in enumerate(disks):
            ip = d.get("initializeParams")
            if ip is not None:
                dname = ip.get("diskName") or (name if d.get("boot") else f"{name}-{i}")
                if not re.fullmatch(NAME_RE, dname):
                    raise invalid_field(f"resource.disks[{i}].initializeParams.diskName", dname, f"Must be a match of regex '{NAME_RE}'")
                if (zone, dname) in self.disks_by_key:
                    raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/disks/{dname}' already exists",
                                   reason="alreadyExists")
                dt = ip.get("diskType")
                if dt and not re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/" + re.escape(zone)
                                           + "/diskTypes/(" + "|".join(cat.DISK_TYPES) + ")", dt):
                    raise invalid_field(f"resource.disks[{i}].initializeParams.diskType", dt, "Disk type must be a valid URL in the instance's zone.")
                size = ip.get("diskSizeGb")
                if ip.get("sourceImage"):
                    _, _, img_gb = self._image(ip["sourceImage"])
                    if d.get("boot"):
                        image_gb = img_gb
                    if size is not None and int(size) < img_gb:
                        raise invalid_field(f"resource.disks[{i}].initializeParams.diskSizeGb", size,
                                            f"Requested disk size cannot be smaller than the image size ({img_gb} GB)")
                elif d.get("boot"):
                    raise invalid_field(f"resource.disks[{i}].initializeParams.sourceImage", "", "A source image must be specified for a boot disk.")
                if size is not None and int(size) < 10:
                    raise invalid_field(f"resource.disks[{i}].initializeParams.diskSizeGb", size, "Disk size cannot be smaller than 10 GB.")
            elif d.get("source"):
                m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/([^/]+)/disks/([^/]+)", d["source"])
                disk = self.disks_by_key.get((m.group(1), m.group(2))) if m else None
                if disk is None or m is None or m.group(1) != zone:
                    raise invalid_field(f"resource.disks[{i}].source", d["source"], "The referenced disk resource cannot be found.")
                if disk.get("users") and d.get("mode", "READ_WRITE") == "READ_WRITE":
                    raise ApiError(400, f"The disk resource '{_path_of(disk['selfLink'])}' is already being used by "
                                        f"'{_path_of(disk['users'][0])}'", reason="resourceInUseByAnotherResource")
            else:
                raise invalid_field(f"resource.disks[{i}]", "", "Either source or initializeParams must be specified.")
        return image_gb

    def _capacity_errors(self, project: str, zone: str, region: str, accs: list[tuple[str, int]], spot: bool,
                         machine_type: str, ignore: dict | None = None) -> tuple[ApiError | None, OpError | None]:
        """Quota first (as the real API checks it), then stockout."""
        gpus = sum(c for _, c in accs)
        if gpus:
            lim, used = self._quota_state(None, "GPUS_ALL_REGIONS", ignore)
            if lim is not None and used + gpus > lim:
                msg = f"Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: {lim:.1f} globally."
                info = {"metricName": "compute.googleapis.com/gpus_all_regions", "limitName": "GPUS-ALL-REGIONS-per-project",
                        "dimensions": {"global": "global"}, "limit": lim}
                if self.quota_error_mode == "operation":
                    return None, OpError("QUOTA_EXCEEDED", msg, 403, [{"quotaInfo": info}])
                return ApiError(403, msg, reason="quotaExceeded", domain="usageLimits", details=[
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXCEEDED", "domain": "compute.googleapis.com",
                     "metadata": {"quota_metric": info["metricName"], "quota_limit": info["limitName"], "quota_limit_value": str(int(lim))}},
                ]), None
            for atype, count in accs:
                metric = ("PREEMPTIBLE_" if spot else "") + cat.ACCELERATORS[atype][2]
                lim, used = self._quota_state(region, metric, ignore)
                if lim is not None and used + count > lim:
                    msg = f"Quota '{metric}' exceeded.  Limit: {lim:.1f} in region {region}."
                    info = {"metricName": f"compute.googleapis.com/{metric.lower()}",
                            "limitName": f"{metric.replace('_', '-')}-per-project-region",
                            "dimensions": {"region": region}, "limit": lim}
                    if self.quota_error_mode == "sync":
                        return ApiError(403, msg, reason="quotaExceeded", domain="usageLimits"), None
                    return None, OpError("QUOTA_EXCEEDED", msg, 403, [{"quotaInfo": info}])
        so = self.stockouts.get(zone)
        if so:
            text = f"The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request."
            if so.sync_503:
                return ApiError(503, f"{text}  Try a different zone, or try again later.", reason="resourceUnavailable",
                                status="UNAVAILABLE"), None
            details: list = []
            if so.code.endswith("_WITH_DETAILS"):
                msg = f"{text}  '(resource type:compute)'."
                # recorded shape: reason "resource_availability", metadatas vmType/attachment
                meta: dict = {"zone": zone, "vmType": machine_type}
                if accs:
                    meta["attachment"] = ",".join(f"{t}={c}" for t, c in accs)
                if so.zones_available:
                    meta["zonesAvailable"] = ",".join(so.zones_available)
                details = [{"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com", "metadatas": meta}},
                           {"help": {"links": [{"description": "Troubleshooting documentation",
                                                "url": "https://cloud.google.com/compute/docs/resource-error"}]}}]
            else:
                msg = f"{text}  Try a different zone, or try again later."
                if so.zones_available:
                    details = [{"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com",
                                              "metadatas": {"zone": zone, "zonesAvailable": ",".join(so.zones_available)}}}]
            return None, OpError(so.code, msg, 503, details)
        return None, None

    def _quota_state(self, region: str | None, metric: str, ignore: dict | None = None) -> tuple[float | None, float]:
        table = self.project_quotas if region is None else self.region_quotas.get(region, {})
        if metric not in table:
            return None, 0.0
        lim, base = table[metric]
        return lim, base + self._usage(region, metric, ignore)

    def _usage(self, region: str | None, metric: str, ignore: dict | None = None) -> float:
        total = 0.0
        for (zone, _), inst in self.instances_by_key.items():
            if inst is ignore or inst["status"] not in ACTIVE:
                continue
            if region is not None and _region_of(zone) != region:
                continue
            spot = inst.get("scheduling", {}).get("provisioningModel") == "SPOT"
            if metric == "CPUS":
                total += cat.MACHINE_TYPES[inst["machineType"].rsplit("/", 1)[-1]][0]
                continue
            for a in inst.get("guestAccelerators", []):
                atype, count = a["acceleratorType"].rsplit("/", 1)[-1], a.get("acceleratorCount", 0)
                if metric == "GPUS_ALL_REGIONS":
                    total += count
                elif metric == ("PREEMPTIBLE_" if spot else "") + cat.ACCELERATORS[atype][2]:
                    total += count
        return total

    def _materialize(self, project: str, zone: str, body: dict, nat_ip: str | None, disk_image_gb: int | None) -> dict:
        """Turn a (valid) insert body into the stored instance resource, creating its disks."""
        name = body["name"]
        now = self._ts()
        mt = body["machineType"].rsplit("/", 1)[-1]
        builtin = cat.MACHINE_TYPES.get(mt, (0, 0, None))[2]
        self_link = self._link(project, "zones", zone, "instances", name)
        inst = copy.deepcopy(body)
        inst.update(
            kind="compute#instance",
            id=self._new_id(),
            creationTimestamp=now,
            status="PROVISIONING",
            machineType=self._link(project, "zones", zone, "machineTypes", mt),
            zone=self._link(project, "zones", zone),
            selfLink=self_link,
            cpuPlatform="Intel Broadwell" if mt.startswith("n1") else "Intel Cascade Lake",
            labels=dict(body.get("labels") or {}),
            labelFingerprint=self._fingerprint(),
            fingerprint=self._fingerprint(),
            startRestricted=False,
            deletionProtection=bool(body.get("deletionProtection", False)),
            canIpForward=bool(body.get("canIpForward", False)),
        )
        md = body.get("metadata") or {}
        inst["metadata"] = {"kind": "compute#metadata", "fingerprint": self._fingerprint(), "items": list(md.get("items") or [])}
        if not inst["metadata"]["items"]:
            del inst["metadata"]["items"]
        tags = body.get("tags") or {}
        inst["tags"] = {"fingerprint": self._fingerprint(), **({"items": list(tags["items"])} if tags.get("items") else {})}
        sched = dict(body.get("scheduling") or {})
        spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
        sched.setdefault("onHostMaintenance", "TERMINATE" if spot else "MIGRATE")
        sched.setdefault("automaticRestart", not spot)
        sched.setdefault("preemptible", spot)
        sched.setdefault("provisioningModel", "SPOT" if spot else "STANDARD")
        inst["scheduling"] = sched
        accs = [builtin] if builtin else [
            (a["acceleratorType"].rsplit("/", 1)[-1], int(a.get("acceleratorCount", 1))) for a in body.get("guestAccelerators") or []]
        if accs:
            inst["guestAccelerators"] = [{"acceleratorType": self._link(project, "zones", zone, "acceleratorTypes", t),
                                          "acceleratorCount": c} for t, c in accs]
        else:
            inst.pop("guestAccelerators", None)
        region = _region_of(zone)
        nics = []
        for i, nic in enumerate(body.get("networkInterfaces") or [{}]):
            net = (nic.get("network") or "global/networks/default").rsplit("/", 1)[-1]
            out = {
                "kind": "compute#networkInterface",
                "name": f"nic{i}",
                "network": self._link(project, "global", "networks", net),
                "subnetwork": self._link(project, "regions", region, "subnetworks", net),
                "networkIP": f"10.128.0.{next(self._ip_counter)}",
                "fingerprint": self._fingerprint(),
                "stackType": "IPV4_ONLY",
            }
            acs = nic.get("accessConfigs") or []
            if acs:
                out["accessConfigs"] = [{"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT",
                                         "name": ac.get("name", "External NAT"), "networkTier": ac.get("networkTier", "PREMIUM"),
                                         **({"natIP": ac.get("natIP") or nat_ip} if (ac.get("natIP") or nat_ip) else {})}
                                        for ac in acs]
            nics.append(out)
        inst["networkInterfaces"] = nics
        attached = []
        for i, d in enumerate(body.get("disks") or []):
            ip = d.get("initializeParams")
            if ip is not None:
                dname = ip.get("diskName") or (name if d.get("boot") else f"{name}-{i}")
                size = int(ip.get("diskSizeGb") or disk_image_gb or (cat.DLVM_DEFAULT_GB if d.get("boot") else 500))
                dtype = (ip.get("diskType") or "pd-standard").rsplit("/", 1)[-1]
                disk = self._make_disk(project, zone, dname, size, dtype, ip.get("sourceImage"), ip.get("labels"))
                disk["users"] = [self_link]
                disk["lastAttachTimestamp"] = now
                disk["status"] = "CREATING" if disk_image_gb is not None or not d.get("boot") else "READY"
                self.disks_by_key[(zone, dname)] = disk
            else:
                dname = d["source"].rsplit("/", 1)[-1]
                disk = self.disks_by_key[(zone, dname)]
                disk.setdefault("users", []).append(self_link)
                disk["lastAttachTimestamp"] = now
            attached.append({
                "kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": d.get("mode", "READ_WRITE"),
                "source": disk["selfLink"], "deviceName": d.get("deviceName") or (dname if not d.get("boot") else "persistent-disk-0"),
                "index": i, "boot": bool(d.get("boot")), "autoDelete": bool(d.get("autoDelete", False)),
                "interface": d.get("interface", "SCSI"), "diskSizeGb": disk["sizeGb"], "architecture": "X86_64",
            })
        inst["disks"] = attached
        self.instances_by_key[(zone, name)] = inst
        return inst

    def _make_disk(self, project: str, zone: str, name: str, size: int, dtype: str, source_image: str | None, labels: dict | None) -> dict:
        disk = {
            "kind": "compute#disk", "id": self._new_id(), "creationTimestamp": self._ts(), "name": name,
            "sizeGb": str(size), "zone": self._link(project, "zones", zone), "status": "READY",
            "selfLink": self._link(project, "zones", zone, "disks", name),
            "type": self._link(project, "zones", zone, "diskTypes", dtype),
            "labels": dict(labels or {}), "labelFingerprint": self._fingerprint(), "physicalBlockSizeBytes": "4096",
            "architecture": "X86_64",
        }
        if source_image:
            proj, image, _ = self._image(source_image)
            disk["sourceImage"] = self._link(proj, "global", "images", image)
            disk["sourceImageId"] = self._new_id()
        return disk

    def _instance_disks(self, zone: str, inst: dict) -> list[dict]:
        out = []
        for d in inst.get("disks", []):
            disk = self.disks_by_key.get((zone, d["source"].rsplit("/", 1)[-1]))
            if disk is not None:
                out.append(disk)
        return out

    def _instances_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone, name = ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(ctx.project, zone, name)
        self._advance_target(inst["selfLink"])
        inst = self.instances_by_key.get((zone, name))
        if inst is None:
            raise not_found(f"projects/{ctx.project}/zones/{zone}/instances/{name}")
        return 200, copy.deepcopy(inst)

    def _instances_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [i for (z, _), i in sorted(self.instances_by_key.items()) if z == zone]
        return self._list("compute#instanceList", items, ctx, self._link(ctx.project, "zones", zone, "instances"))

    def _instances_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone: dict[str, list[dict]] = {}
        for (z, _), inst in sorted(self.instances_by_key.items()):
            by_zone.setdefault(z, []).append(inst)
        return self._aggregated("compute#instanceAggregatedList", "instances", by_zone, ctx, "instances")

    def _instances_delete(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if inst.get("deletionProtection"):
            raise ApiError(400, f"Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'.",
                           reason="resourceInUseByAnotherResource")
        inst["status"] = "STOPPING"
        op = self._new_op(project, ("zones", zone), "delete", inst, on_done=lambda: self._remove_instance(zone, inst))
        return self._op_response(op)

    def _remove_instance(self, zone: str, inst: dict) -> None:
        """Delete an instance: auto-delete disks go with it, other disks are detached."""
        for d in inst.get("disks", []):
            key = (zone, d["source"].rsplit("/", 1)[-1])
            disk = self.disks_by_key.get(key)
            if disk is None:
                continue
            if d.get("autoDelete"):
                del self.disks_by_key[key]
            else:
                disk["users"] = [u for u in disk.get("users", []) if u != inst["selfLink"]]
                if not disk["users"]:
                    del disk["users"]
                disk["lastDetachTimestamp"] = self._ts()
        self.instances_by_key.pop((zone, inst["name"]), None)
        self.guest_attrs.pop((zone, inst["name"]), None)

    def _instances_start(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if inst["status"] in ("RUNNING", "PROVISIONING", "STAGING"):
            op = self._new_op(project, ("zones", zone), "start", inst, polls=0)
            return self._op_response(op)
        if inst["status"] not in ("TERMINATED", "STOPPED"):
            raise ApiError(400, f"The resource '{_path_of(inst['selfLink'])}' is not ready", reason="resourceNotReady")
        accs = [(a["acceleratorType"].rsplit("/", 1)[-1], a["acceleratorCount"]) for a in inst.get("guestAccelerators", [])]
        spot = inst["scheduling"].get("provisioningModel") == "SPOT"
        sync_err, op_err = self._capacity_errors(project, zone, _region_of(zone), accs, spot,
                                                 inst["machineType"].rsplit("/", 1)[-1], ignore=inst)
        if sync_err:
            raise sync_err
        if op_err:
            op = self._new_op(project, ("zones", zone), "start", inst, error=op_err)
            return self._op_response(op)
        inst["status"] = "STAGING"

        def done() -> None:
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = self._ts()
            if self.start_nat_ip:  # a real ephemeral external IP usually changes across stop/start
                for nic in inst["networkInterfaces"]:
                    for ac in nic.get("accessConfigs", []):
                        ac["natIP"] = self.start_nat_ip

        op = self._new_op(project, ("zones", zone), "start", inst, on_done=done)
        return self._op_response(op)

    def _instances_stop(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if inst["status"] == "TERMINATED":
            op = self._new_op(project, ("zones", zone), "stop", inst, polls=0)
            return self._op_response(op)
        inst["status"] = "STOPPING"

        def done() -> None:
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = self._ts()

        op = self._new_op(project, ("zones", zone), "stop", inst, on_done=done)
        return self._op_response(op)

    def _instances_set_metadata(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        _check_metadata(ctx.body, "metadata")
        fp = ctx.body.get("fingerprint")
        if fp != inst["metadata"]["fingerprint"]:
            raise ApiError(412, "Supplied fingerprint does not match current metadata fingerprint.", reason="conditionNotMet",
                           extra={"location": "If-Match", "locationType": "header"})
        inst["metadata"] = {"kind": "compute#metadata", "fingerprint": self._fingerprint(),
                            **({"items": list(ctx.body["items"])} if ctx.body.get("items") else {})}
        op = self._new_op(project, ("zones", zone), "setMetadata", inst)
        return self._op_response(op)

    def _instances_set_labels(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        _check_labels(ctx.body.get("labels"), "labels")
        if ctx.body.get("labelFingerprint") != inst["labelFingerprint"]:
            raise ApiError(412, "Labels fingerprint either invalid or resource labels have changed", reason="conditionNotMet",
                           extra={"location": "If-Match", "locationType": "header"})
        inst["labels"] = dict(ctx.body.get("labels") or {})
        inst["labelFingerprint"] = self._fingerprint()
        op = self._new_op(project, ("zones", zone), "setLabels", inst)
        return self._op_response(op)

    def _instances_set_tags(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if ctx.body.get("fingerprint") != inst["tags"]["fingerprint"]:
            raise ApiError(412, "Supplied fingerprint does not match current tags fingerprint.", reason="conditionNotMet")
        inst["tags"] = {"fingerprint": self._fingerprint(), **({"items": list(ctx.body["items"])} if ctx.body.get("items") else {})}
        op = self._new_op(project, ("zones", zone), "setTags", inst)
        return self._op_response(op)

    def _instances_set_scheduling(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        sched = dict(ctx.body)
        if inst.get("guestAccelerators") and sched.get("onHostMaintenance", "TERMINATE") != "TERMINATE":
            raise ApiError(400, "Instances with guest accelerators do not support live migration.", reason="badRequest")
        if sched.get("provisioningModel") != inst["scheduling"].get("provisioningModel") and "provisioningModel" in sched \
                and inst["status"] != "TERMINATED":
            raise ApiError(400, "Instance must be stopped to change the provisioning model.", reason="badRequest")
        inst["scheduling"].update(sched)
        op = self._new_op(project, ("zones", zone), "setScheduling", inst)
        return self._op_response(op)

    def _instances_guest_attributes(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        md = {i["key"]: i.get("value") for i in inst.get("metadata", {}).get("items", [])}
        query_path = ctx.query.get("queryPath")
        variable_key = ctx.query.get("variableKey")
        missing = not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{query_path or variable_key or ''}")
        if str(md.get("enable-guest-attributes", "")).upper() != "TRUE":
            raise missing
        attrs = self.guest_attrs.get((zone, name), {})
        out: dict = {"kind": "compute#guestAttributes", "selfLink": inst["selfLink"] + "/getGuestAttributes"}
        if variable_key:
            ns, _, key = variable_key.partition("/")
            if key not in attrs.get(ns, {}):
                raise missing
            out.update(variableKey=variable_key, variableValue=attrs[ns][key])
            return 200, out
        ns_filter, _, key_prefix = (query_path or "").partition("/")
        items = [{"namespace": ns, "key": k, "value": v}
                 for ns, kv in sorted(attrs.items()) if not ns_filter or ns == ns_filter
                 for k, v in sorted(kv.items()) if k.startswith(key_prefix)]
        if not items:
            raise missing
        out.update(queryPath=query_path or "", queryValue={"items": items})
        return 200, out

    # ---------------------------------------------------------------- firewalls / networks
    def _firewalls_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, body = ctx.project, ctx.body
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if name in self.firewalls_by_name:
            raise ApiError(409, f"The resource 'projects/{project}/global/firewalls/{name}' already exists", reason="alreadyExists")
        fw = self._firewall_body(project, name, body)
        self.firewalls_by_name[name] = fw
        op = self._new_op(project, ("global", None), "insert", fw)
        return self._op_response(op)

    def _firewall_body(self, project: str, name: str, body: dict, old: dict | None = None) -> dict:
        if body.get("allowed") and body.get("denied"):
            raise ApiError(400, "Invalid value for field 'resource': ''. Exactly one of allowed or denied must be set.")
        for i, rule in enumerate(body.get("allowed") or body.get("denied") or []):
            for port in rule.get("ports", []):
                if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", port):
                    raise invalid_field(f"resource.allowed[{i}].ports", port, "Must be a port number or a range.")
        for i, cidr in enumerate(body.get("sourceRanges") or []):
            if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?|[0-9a-fA-F:]+(/\d{1,3})?", cidr):
                raise invalid_field(f"resource.sourceRanges[{i}]", cidr, "Must be a valid IPV4 or IPV6 CIDR range.")
        net = (body.get("network") or (old or {}).get("network") or "global/networks/default").rsplit("/", 1)[-1]
        if net != "default":
            raise invalid_field("resource.network", body.get("network"), "The referenced network resource cannot be found.")
        fw = copy.deepcopy(old) if old else {
            "kind": "compute#firewall", "id": self._new_id(), "creationTimestamp": self._ts(), "name": name,
            "selfLink": self._link(project, "global", "firewalls", name), "priority": 1000, "direction": "INGRESS",
            "disabled": False, "logConfig": {"enable": False},
        }
        fw.update(copy.deepcopy(body))
        fw["network"] = self._link(project, "global", "networks", net)
        fw["name"], fw["selfLink"] = name, self._link(project, "global", "firewalls", name)
        if fw.get("direction", "INGRESS") == "INGRESS" and not fw.get("sourceRanges") and not fw.get("sourceTags"):
            fw["sourceRanges"] = ["0.0.0.0/0"]  # the real API's default for an ingress rule without sources
        return fw

    def _get_firewall(self, project: str, name: str) -> dict:
        fw = self.firewalls_by_name.get(name)
        if fw is None:
            raise not_found(f"projects/{project}/global/firewalls/{name}")
        return fw

    def _firewalls_get(self, ctx: Ctx) -> tuple[int, dict]:
        return 200, copy.deepcopy(self._get_firewall(ctx.project, ctx.params["firewall"]))

    def _firewalls_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [f for _, f in sorted(self.firewalls_by_name.items())]
        return self._list("compute#firewallList", items, ctx, self._link(ctx.project, "global", "firewalls"))

    def _firewalls_patch(self, ctx: Ctx) -> tuple[int, dict]:
        name = ctx.params["firewall"]
        old = self._get_firewall(ctx.project, name)
        if ctx.body.get("name") not in (None, name):
            raise invalid_field("resource.name", ctx.body["name"], "The name of a firewall cannot be changed.")
        body = dict(ctx.body)
        if "allowed" in body:
            old = dict(old, denied=None)
            old.pop("denied")
        fw = self._firewall_body(ctx.project, name, body, old=old)
        self.firewalls_by_name[name] = fw
        op = self._new_op(ctx.project, ("global", None), "patch", fw)
        return self._op_response(op)

    def _firewalls_update(self, ctx: Ctx) -> tuple[int, dict]:
        name = ctx.params["firewall"]
        old = self._get_firewall(ctx.project, name)
        base = {k: old[k] for k in ("kind", "id", "creationTimestamp", "name", "selfLink")}
        fw = self._firewall_body(ctx.project, name, {"priority": 1000, "direction": "INGRESS", **ctx.body}, old=base)
        self.firewalls_by_name[name] = fw
        op = self._new_op(ctx.project, ("global", None), "update", fw)
        return self._op_response(op)

    def _firewalls_delete(self, ctx: Ctx) -> tuple[int, dict]:
        name = ctx.params["firewall"]
        fw = self._get_firewall(ctx.project, name)

        def done() -> None:
            self.firewalls_by_name.pop(name, None)

        op = self._new_op(ctx.project, ("global", None), "delete", fw, on_done=done)
        return self._op_response(op)

    def _networks_get(self, ctx: Ctx) -> tuple[int, dict]:
        net = ctx.params["network"]
        if net != "default":
            raise not_found(f"projects/{ctx.project}/global/networks/{net}")
        return 200, {"kind": "compute#network", "id": "1000000000000000001", "name": "default", "autoCreateSubnetworks": True,
                     "selfLink": self._link(ctx.project, "global", "networks", "default"),
                     "routingConfig": {"routingMode": "REGIONAL"}, "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL"}

    # ---------------------------------------------------------------- disks
    def _disks_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, body = ctx.project, ctx.params["zone"], ctx.body
        self._check_zone(project, zone)
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if (zone, name) in self.disks_by_key:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/disks/{name}' already exists", reason="alreadyExists")
        _check_labels(body.get("labels"), "resource.labels")
        dtype = (body.get("type") or "pd-standard")
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/([^/]+)/diskTypes/([^/]+)", dtype)
        if body.get("type") and (not m or m.group(1) != zone or m.group(2) not in cat.DISK_TYPES):
            raise invalid_field("resource.type", dtype, "The referenced diskType resource cannot be found.")
        dtype = m.group(2) if m else "pd-standard"
        size = body.get("sizeGb")
        img_gb = None
        if body.get("sourceImage"):
            _, _, img_gb = self._image(body["sourceImage"])
            if size is not None and int(size) < img_gb:
                raise invalid_field("resource.sizeGb", size, f"Requested disk size cannot be smaller than the image size ({img_gb} GB)")
        size_gb = int(size) if size is not None else (img_gb or 500)
        if size_gb < 10:
            raise invalid_field("resource.sizeGb", size, "Disk size cannot be smaller than 10 GB.")
        disk = self._make_disk(project, zone, name, size_gb, dtype, body.get("sourceImage"), body.get("labels"))
        if body.get("description"):
            disk["description"] = body["description"]
        disk["status"] = "CREATING"
        self.disks_by_key[(zone, name)] = disk

        def done() -> None:
            disk["status"] = "READY"

        op = self._new_op(project, ("zones", zone), "insert", disk, on_done=done)
        return self._op_response(op)

    def _get_disk(self, project: str, zone: str, name: str) -> dict:
        disk = self.disks_by_key.get((zone, name))
        if disk is None:
            raise not_found(f"projects/{project}/zones/{zone}/disks/{name}")
        return disk

    def _disks_get(self, ctx: Ctx) -> tuple[int, dict]:
        return 200, copy.deepcopy(self._get_disk(ctx.project, ctx.params["zone"], ctx.params["disk"]))

    def _disks_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [d for (z, _), d in sorted(self.disks_by_key.items()) if z == zone]
        return self._list("compute#diskList", items, ctx, self._link(ctx.project, "zones", zone, "disks"))

    def _disks_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone: dict[str, list[dict]] = {}
        for (z, _), d in sorted(self.disks_by_key.items()):
            by_zone.setdefault(z, []).append(d)
        return self._aggregated("compute#diskAggregatedList", "disks", by_zone, ctx, "disks")

    def _disks_delete(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["disk"]
        disk = self._get_disk(project, zone, name)
        if disk.get("users"):
            raise ApiError(400, f"The disk resource '{_path_of(disk['selfLink'])}' is already being used by "
                                f"'{_path_of(disk['users'][0])}'", reason="resourceInUseByAnotherResource")
        disk["status"] = "DELETING"

        def done() -> None:
            self.disks_by_key.pop((zone, name), None)

        op = self._new_op(project, ("zones", zone), "delete", disk, on_done=done)
        return self._op_response(op)

    # ---------------------------------------------------------------- catalogue reads
    def _accel_body(self, project: str, zone: str, atype: str) -> dict:
        desc, maximum, _ = cat.ACCELERATORS[atype]
        return {"kind": "compute#acceleratorType", "id": str(10000 + sorted(cat.ACCELERATORS).index(atype)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": atype, "description": desc,
                "zone": self._link(project, "zones", zone), "maximumCardsPerInstance": maximum,
                "selfLink": self._link(project, "zones", zone, "acceleratorTypes", atype)}

    def _accel_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone, atype = ctx.params["zone"], ctx.params["acceleratorType"]
        if atype not in cat.ZONE_ACCELERATORS.get(zone, []):
            raise not_found(f"projects/{ctx.project}/zones/{zone}/acceleratorTypes/{atype}")
        return 200, self._accel_body(ctx.project, zone, atype)

    def _accel_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [self._accel_body(ctx.project, zone, a) for a in sorted(cat.ZONE_ACCELERATORS.get(zone, []))]
        return self._list("compute#acceleratorTypeList", items, ctx, self._link(ctx.project, "zones", zone, "acceleratorTypes"))

    def _accel_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone = {z: [self._accel_body(ctx.project, z, a) for a in sorted(accs)] for z, accs in cat.ZONE_ACCELERATORS.items()}
        return self._aggregated("compute#acceleratorTypeAggregatedList", "acceleratorTypes", by_zone, ctx, "acceleratorTypes")

    def _mt_body(self, project: str, zone: str, mt: str) -> dict:
        cpus, mem, builtin = cat.MACHINE_TYPES[mt]
        body = {"kind": "compute#machineType", "id": str(1000 + list(cat.MACHINE_TYPES).index(mt)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": mt,
                "description": f"{cpus} vCPU{'s' if cpus > 1 else ''}, {mem / 1024:g} GB RAM",
                "guestCpus": cpus, "memoryMb": mem, "imageSpaceGb": 0, "maximumPersistentDisks": 128,
                "maximumPersistentDisksSizeGb": "263168", "zone": zone, "isSharedCpu": False,
                "selfLink": self._link(project, "zones", zone, "machineTypes", mt), "architecture": "X86_64"}
        if builtin:
            body["accelerators"] = [{"guestAcceleratorType": builtin[0], "guestAcceleratorCount": builtin[1]}]
        return body

    def _mt_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone, mt = ctx.params["zone"], ctx.params["machineType"]
        if mt not in cat.machine_types_in_zone(zone):
            raise not_found(f"projects/{ctx.project}/zones/{zone}/machineTypes/{mt}")
        return 200, self._mt_body(ctx.project, zone, mt)

    def _mt_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [self._mt_body(ctx.project, zone, mt) for mt in cat.machine_types_in_zone(zone)]
        return self._list("compute#machineTypeList", items, ctx, self._link(ctx.project, "zones", zone, "machineTypes"))

    def _mt_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone = {z: [self._mt_body(ctx.project, z, mt) for mt in cat.machine_types_in_zone(z)] for z in _all_zones()}
        return self._aggregated("compute#machineTypeAggregatedList", "machineTypes", by_zone, ctx, "machineTypes")

    def _image_body(self, proj: str, image: str, size: int, family: str | None) -> dict:
        return {"kind": "compute#image", "id": str(abs(hash((proj, image))) % 10**19), "creationTimestamp": "2026-11-01T10:00:00.000-07:00",
                "name": image, "family": family or image.rsplit("-v", 1)[0], "diskSizeGb": str(size), "status": "READY",
                "sourceType": "RAW", "archiveSizeBytes": str(size * 2**28), "architecture": "X86_64",
                "selfLink": self._link(proj, "global", "images", image),
                "licenses": [self._link(proj, "global", "licenses", "dlvm")] if proj == "deeplearning-platform-release" else [],
                "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}]}

    def _images_from_family(self, ctx: Ctx) -> tuple[int, dict]:
        proj, family = ctx.project, ctx.params["family"]
        _, image, size = self._image(f"projects/{proj}/global/images/family/{family}")
        return 200, self._image_body(proj, image, size, family)

    def _images_get(self, ctx: Ctx) -> tuple[int, dict]:
        proj, image = ctx.project, ctx.params["image"]
        _, image, size = self._image(f"projects/{proj}/global/images/{image}")
        return 200, self._image_body(proj, image, size, None)

    def _zone_body(self, project: str, zone: str) -> dict:
        region = _region_of(zone)
        return {"kind": "compute#zone", "id": str(2000 + _all_zones().index(zone)), "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
                "name": zone, "description": zone, "status": "UP", "region": self._link(project, "regions", region),
                "selfLink": self._link(project, "zones", zone), "availableCpuPlatforms": ["Intel Broadwell", "Intel Cascade Lake",
                                                                                          "AMD Milan", "Intel Sapphire Rapids"],
                "supportsPzs": False}

    def _zones_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        if zone not in _all_zones():
            raise not_found(f"projects/{ctx.project}/zones/{zone}")
        return 200, self._zone_body(ctx.project, zone)

    def _zones_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [self._zone_body(ctx.project, z) for z in _all_zones()]
        return self._list("compute#zoneList", items, ctx, self._link(ctx.project, "zones"))

    def _quota_list(self, region: str | None) -> list[dict]:
        table = self.project_quotas if region is None else self.region_quotas.get(region, {})
        return [{"metric": m, "limit": lim, "usage": base + self._usage(region, m)} for m, (lim, base) in sorted(table.items())]

    def _region_body(self, project: str, region: str) -> dict:
        return {"kind": "compute#region", "id": str(3000 + list(cat.REGIONS).index(region)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": region, "description": region, "status": "UP",
                "zones": [self._link(project, "zones", z) for z in cat.REGIONS[region]], "quotas": self._quota_list(region),
                "selfLink": self._link(project, "regions", region), "supportsPzs": False}

    def _regions_get(self, ctx: Ctx) -> tuple[int, dict]:
        region = ctx.params["region"]
        if region not in cat.REGIONS:
            raise not_found(f"projects/{ctx.project}/regions/{region}")
        return 200, self._region_body(ctx.project, region)

    def _regions_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [self._region_body(ctx.project, r) for r in cat.REGIONS]
        return self._list("compute#regionList", items, ctx, self._link(ctx.project, "regions"))

    def _projects_get(self, ctx: Ctx) -> tuple[int, dict]:
        p = ctx.project
        return 200, {"kind": "compute#project", "id": self.project_number, "name": p,
                     "creationTimestamp": "2024-01-15T09:00:00.000-08:00", "selfLink": LINK + f"projects/{p}",
                     "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": "AAAAAAAAAAA="},
                     "quotas": self._quota_list(None), "defaultServiceAccount": f"{self.project_number}-compute@developer.gserviceaccount.com",
                     "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS", "defaultNetworkTier": "PREMIUM",
                     "vmDnsSetting": "ZONAL_ONLY"}

    # ---------------------------------------------------------------- operations
    def _find_op(self, ctx: Ctx) -> Operation:
        name = ctx.params["operation"]
        op = self.operations.get(name)
        kind = {"zoneOperations": "zones", "regionOperations": "regions", "globalOperations": "global"}[ctx.route.resource]
        where = ctx.params.get("zone") or ctx.params.get("region")
        if op is None or op.scope != (kind, where):
            scope = "global" if kind == "global" else f"{kind}/{where}"
            raise not_found(f"projects/{ctx.project}/{scope}/operations/{name}")
        return op

    def _op_get(self, ctx: Ctx) -> tuple[int, dict]:
        op = self._find_op(ctx)
        self._poll(op)
        return self._op_response(op)

    def _op_wait(self, ctx: Ctx) -> tuple[int, dict]:
        # The real wait blocks up to ~2 minutes; here each wait is one poll, so a slow operation
        # (operation_polls > 1) makes the caller loop, as it must when the real wait times out.
        op = self._find_op(ctx)
        self._poll(op)
        return self._op_response(op)

    def _op_list(self, ctx: Ctx) -> tuple[int, dict]:
        kind = {"zoneOperations": "zones", "regionOperations": "regions", "globalOperations": "global"}[ctx.route.resource]
        where = ctx.params.get("zone") or ctx.params.get("region")
        items = [op.body for op in self.operations.values() if op.scope == (kind, where)]
        base = self._link(ctx.project, *(("global",) if kind == "global" else (kind, where or "")))
        return self._list("compute#operationList", items, ctx, base + "/operations")

    def _op_delete(self, ctx: Ctx) -> tuple[int, dict]:
        op = self._find_op(ctx)
        self.operations.pop(op.body["name"], None)
        return 200, {}

    def _op_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_scope: dict[str, list[dict]] = {}
        for op in self.operations.values():
            kind, where = op.scope
            by_scope.setdefault("global" if kind == "global" else f"{kind}/{where}", []).append(op.body)
        return self._aggregated("compute#operationAggregatedList", "operations", by_scope, ctx, "operations", prefixed=True)

    # ---------------------------------------------------------------- list machinery
    def _list(self, kind: str, items: list[dict], ctx: Ctx, self_link: str) -> tuple[int, dict]:
        items = _apply_filter(items, ctx.query.get("filter"))
        max_results = int(ctx.query.get("maxResults") or 500)
        start = int(ctx.query.get("pageToken") or 0)
        page = items[start:start + max_results]
        out: dict = {"kind": kind, "id": self_link.split("/compute/v1/", 1)[-1], "items": copy.deepcopy(page), "selfLink": self_link}
        if not page:
            del out["items"]
        if start + max_results < len(items):
            out["nextPageToken"] = str(start + max_results)
        return 200, out

    def _aggregated(self, kind: str, key: str, by_scope: dict[str, list[dict]], ctx: Ctx, what: str,
                    prefixed: bool = False) -> tuple[int, dict]:
        scopes = sorted(set(by_scope) | ({f"zones/{z}" for z in _all_zones()} if prefixed else set(_all_zones())))
        items: dict = {}
        for scope in scopes:
            name = scope if prefixed else f"zones/{scope}"
            found = _apply_filter(by_scope.get(scope, []), ctx.query.get("filter"))
            if found:
                items[name] = {key: copy.deepcopy(found)}
            else:
                items[name] = {"warning": {"code": "NO_RESULTS_ON_PAGE",
                                           "message": f"There are no results for scope '{name}' on this page.",
                                           "data": [{"key": "scope", "value": name}]}}
        return 200, {"kind": kind, "id": f"projects/{ctx.project}/aggregated/{what}", "items": items,
                     "selfLink": self._link(ctx.project, "aggregated", what)}


# --- module helpers --------------------------------------------------------------------------

def _all_zones() -> list[str]:
    return [z for zones in cat.REGIONS.values() for z in zones]


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _path_of(link: str) -> str:
    return link.split("/compute/v1/", 1)[-1]


def _resource_path(ctx: Ctx) -> str:
    """'projects/p/zones/z/instances/x' for the permission-denied message."""
    p = ctx.params
    name = p.get("instance") or p.get("disk") or p.get("firewall")
    if not name and isinstance(ctx.body, dict):
        name = ctx.body.get("name")
    kind = ctx.route.resource
    if "zone" in p:
        base = f"projects/{ctx.project}/zones/{p['zone']}"
    elif "region" in p:
        base = f"projects/{ctx.project}/regions/{p['region']}"
    elif kind in ("firewalls", "globalOperations", "networks", "images"):
        base = f"projects/{ctx.project}/global"
    else:
        return f"projects/{ctx.project}"
    return f"{base}/{kind}/{name}" if name else f"{base}/{kind}" if kind not in ("regions", "zones") else base


_PERMISSION_VERBS = {"insert": "create", "aggregatedList": "list", "patch": "update", "wait": "get"}


def _permission(route: Route) -> str:
    verb = _PERMISSION_VERBS.get(route.method, route.method)
    return f"compute.{route.resource}.{verb}"


_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_METADATA_KEY = re.compile(r"[a-zA-Z0-9-_]{1,128}")


def _check_labels(labels: dict | None, field_path: str) -> None:
    for k, v in (labels or {}).items():
        if not _LABEL_KEY.fullmatch(k):
            raise ApiError(400, f"Invalid value for field '{field_path}': ''. Label key '{k}' violates format constraints. The key "
                                "must start with a lowercase character, can only contain lowercase letters, numeric characters, "
                                "underscores and dashes. The key can be at most 63 characters long. International characters are allowed.")
        if not _LABEL_VALUE.fullmatch(str(v)):
            raise ApiError(400, f"Invalid value for field '{field_path}': ''. Label value '{v}' violates format constraints. The value "
                                "can only contain lowercase letters, numeric characters, underscores and dashes. The value can be at "
                                "most 63 characters long. International characters are allowed.")
    if len(labels or {}) > 64:
        raise ApiError(400, f"Invalid value for field '{field_path}': ''. Too many labels (at most 64).")


def _check_metadata(metadata: dict | None, field_path: str) -> None:
    items = (metadata or {}).get("items") or []
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(items):
        key = item.get("key") or ""
        if not _METADATA_KEY.fullmatch(key):
            raise invalid_field(f"{field_path}.items[{i}].key", key, f"Must be a match of regex '{_METADATA_KEY.pattern}'")
        if key in seen:
            raise invalid_field(f"{field_path}.items[{i}].key", key, "Duplicate keys are not allowed.")
        seen.add(key)
        total += len(key) + len(item.get("value") or "")
    if total > 512 * 1024:
        raise ApiError(400, f"Invalid value for field '{field_path}': ''. Metadata total size exceeds 512 KB.")


def _injected(code: int) -> ApiError:
    text = {429: "Rate Limit Exceeded", 500: "Internal error. Please try again or contact Google Support.",
            502: "Bad Gateway", 503: "The service is currently unavailable.", 504: "Deadline exceeded"}.get(code, f"Injected failure {code}")
    reason = {429: "rateLimitExceeded", 403: "forbidden", 404: "notFound"}.get(code, "backendError")
    return ApiError(code, text, reason=reason, status=RPC_STATUS.get(code))


def _html_404(path: str) -> tuple[int, dict, bytes]:
    body = ("<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n"
            f"  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not found on "
            "this server.  <ins>That\u2019s all we know.</ins>\n")
    return 404, {"Content-Type": "text/html; charset=UTF-8"}, body.encode()


_TERM = re.compile(r"""\s*\(?\s*([\w.\-]+)\s*(!=|=|:|\beq\b|\bne\b)\s*("[^"]*"|'[^']*'|[^\s)]+)\s*\)?\s*""")


def _apply_filter(items: list[dict], expr: str | None) -> list[dict]:
    """The subset of Compute's list filter syntax gcpdl uses: `a = "x"`, `a != x`, `labels.k:*`,
    `a eq regex`, `a ne regex`, combined with AND (explicit or by juxtaposition)."""
    if not expr:
        return items
    terms = []
    pos = 0
    text = expr.strip()
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m:
            raise ApiError(400, f"Invalid value for field 'filter': '{expr}'. Invalid list filter expression.")
        terms.append(m.groups())
        pos = m.end()
        conj = re.match(r"\s*AND\s+", text[pos:])
        if conj:
            pos += conj.end()
        elif re.match(r"\s*OR\s+", text[pos:]):
            raise ApiError(400, f"Invalid value for field 'filter': '{expr}'. OR is not supported by this fake.")

    def value_of(item: dict, dotted: str) -> Any:
        cur: Any = item
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur

    def text_of(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    def ok(item: dict) -> bool:
        for key, op, raw in terms:
            want = raw[1:-1] if raw[:1] in "\"'" and raw[-1:] == raw[:1] else raw
            v = value_of(item, key)
            if op == ":":
                if v is None or (want != "*" and want not in text_of(v)):
                    return False
                continue
            if op in ("eq", "ne"):
                hit = v is not None and re.fullmatch(want, text_of(v)) is not None
                if hit != (op == "eq"):
                    return False
                continue
            pattern = "^" + ".*".join(re.escape(p) for p in want.split("*")) + "$"
            hit = v is not None and re.match(pattern, text_of(v)) is not None
            if hit != (op == "="):
                return False
        return True

    return [i for i in items if ok(i)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real front end; every reply has a length
    owner: FakeCompute

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, data = self.owner.handle(self.command, self.path, headers, raw)
        self.send_response(status)
        for k, v in out_headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        # headers and body in one write: two small writes on a keep-alive socket meet the
        # client's delayed ACK and cost ~40 ms per request
        self._headers_buffer.append(b"\r\n" + data)
        self.flush_headers()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request stderr
        pass
