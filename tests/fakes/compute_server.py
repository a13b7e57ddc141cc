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

This module holds the fake's state, knobs and HTTP/auth/dispatch; the resources live beside it:
compute_instances, compute_disks_firewalls, compute_reads (catalogue and lists),
compute_operations; shared shapes in compute_common; the world in compute_catalog.
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
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_common import (  # noqa: F401  (re-exported: tests import these from here)
    LINK, ApiError, Ctx, FailRule, LoggedRequest, Operation, OpError, Stockout, html_404, injected, not_found, region_of,
    rfc3339,
)
from tests.fakes.compute_discovery import Route, discovery, validate_body
from tests.fakes.compute_disks_firewalls import DisksFirewallsMixin
from tests.fakes.compute_instances import InstancesMixin
from tests.fakes.compute_operations import OperationsMixin
from tests.fakes.compute_policies import PoliciesMixin
from tests.fakes.compute_reads import ReadsMixin
from tests.fakes.loopback import LoopbackServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class FakeCompute(LoopbackServer, InstancesMixin, DisksFirewallsMixin, ReadsMixin, OperationsMixin, PoliciesMixin):
    """State, faults and the HTTP server. Thread-safe: every request runs under one lock."""

    def __init__(self, key_dir: Path | str | None = None, project: str = "test-project"):
        self.project = project
        self.project_number = "123456789012"
        self._lock = threading.RLock()
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
    thread_name = "fake-compute"

    @property
    def handler(self) -> type:
        return _Handler

    def start(self) -> "FakeCompute":
        discovery()  # index the 4.9 MB document once, before the first request
        super().start()
        if self._key_dir is not None:
            self.write_key_file(self._key_dir / "service-account.json")
        return self

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
            self.resource_policies: dict[tuple[str, str], dict] = {}  # (region, name) -> policy
            # the default VPC (auto mode) with no rules; seed_default_rules() adds the rules a new
            # project carries, remove_network("default") makes a project without it
            self.networks: dict[str, dict] = {"default": {"auto": True, "id": "1000000000000000001"}}
            self.subnets: dict[tuple[str, str], dict] = {}  # (region, name) -> custom-mode subnets
            self.operations: dict[str, Operation] = {}
            self.guest_attrs: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
            self.project_quotas: dict[str, list[float]] = {m: [lim, 0.0] for m, lim in cat.PROJECT_QUOTAS.items()}
            self.region_quotas: dict[str, dict[str, list[float]]] = {
                r: {m: [lim, 0.0] for m, lim in cat.REGION_QUOTAS.items()} for r in cat.REGIONS
            }
            self.extra_images: dict[str, dict[str, int]] = {}
            # the project's commonInstanceMetadata, e.g. {"enable-oslogin": "TRUE"} (set_project_metadata)
            self.project_metadata: dict[str, str] = {}
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
            self.internal_ips: dict[str, str] = {}  # instance name -> networkIP (default 10.128.0.N)
            self.start_nat_ip: str | None = None  # natIP a started VM gets (None: keeps its address)
            self.require_auth = True
            self.requests: list[LoggedRequest] = []
            self.crashes: list[str] = []  # tracebacks of bugs in the fake itself (answered as 500)
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
                 sync_503: bool = False, after: int = 0) -> None:
        """Inserts in ``zone`` fail for lack of capacity; ``after``: the first ``after`` inserts
        still get capacity (a group that runs out part-way: stockout on the third VM is after=2)."""
        self.stockouts[zone] = Stockout(code, zones_available, sync_503, after)

    def policies(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(p) for _, p in sorted(self.resource_policies.items())]

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

    def set_project_metadata(self, key: str, value: str | None) -> None:
        """Project-wide metadata (commonInstanceMetadata); None removes the key."""
        with self._lock:
            if value is None:
                self.project_metadata.pop(key, None)
            else:
                self.project_metadata[key] = value

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
                     spot: bool = False, disk_size_gb: int = 100, tags: list[str] | None = None,
                     service_account: str | None = None) -> dict:
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
            if service_account:
                body["serviceAccounts"] = [{"email": service_account, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]
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
            return html_404(path)
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
                    raise injected(after.status)
            except ApiError as e:
                status, out = e.code, e.body
            except Exception as e:  # a bug in the fake: say so in the reply instead of dropping the connection
                import traceback

                self.crashes.append(traceback.format_exc())
                status, out = 500, {"error": {"code": 500, "message": f"fake compute crashed: {e!r}", "errors": [
                    {"message": f"fake compute crashed: {e!r}", "domain": "global", "reason": "backendError"}]}}
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
                raise injected(rule.status)
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
            "compute.instances.attachDisk": self._instances_attach_disk,
            "compute.instances.detachDisk": self._instances_detach_disk,
            "compute.instances.setLabels": self._instances_set_labels,
            "compute.instances.setScheduling": self._instances_set_scheduling,
            "compute.instances.setTags": self._instances_set_tags,
            "compute.instances.getGuestAttributes": self._instances_guest_attributes,
            "compute.instances.testIamPermissions": self._instances_test_permissions,
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
            "compute.resourcePolicies.insert": self._policies_insert,
            "compute.resourcePolicies.get": self._policies_get,
            "compute.resourcePolicies.list": self._policies_list,
            "compute.resourcePolicies.delete": self._policies_delete,
            "compute.networks.get": self._networks_get,
            "compute.networks.list": self._networks_list,
            "compute.subnetworks.get": self._subnetworks_get,
            "compute.subnetworks.list": self._subnetworks_list,
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
        region = region_of(zone)
        if zone not in cat.REGIONS.get(region, []):
            raise ApiError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.")
        return region

    def _get_instance(self, project: str, zone: str, name: str) -> dict:
        inst = self.instances_by_key.get((zone, name))
        if inst is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst


# --- module helpers --------------------------------------------------------------------------

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real front end; every reply has a length
    fake: FakeCompute

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, data = self.fake.handle(self.command, self.path, headers, raw)
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

