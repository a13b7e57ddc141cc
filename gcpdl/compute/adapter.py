"""Executes ``ApiCall`` values and REST reads against Compute Engine, with retries and deadlines.

Two paths, one endpoint and one set of credentials (both from the factory):
- reads go as raw REST JSON through ``factory.session`` (google-auth's AuthorizedSession): it
  imports in ~0.2 s, where google.cloud.compute_v1 costs ~2.4 s on this machine, so `status`
  and `up`'s pre-flight answer without waiting for it;
- mutations and operation waits go through the google-cloud-compute clients, fed the dry-run's
  own bodies (``Instance.from_json(json.dumps(body))``). Only the service modules used are
  imported (clients.compute_class), and ``prefetch()`` starts that import on a thread at the
  beginning of `up`, so it overlaps the pre-flight reads.

429 and 5xx are retried here, with backoff, under the caller's deadline, on reads and mutations
alike (the library retries only reads, only on 503, with its own long deadline, so its retry is
turned off). Mutations carry a requestId so a retried insert cannot create a second VM.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any, Callable

from gcpdl.clients import ClientFactory
from gcpdl.compute import errors as cerrors
from gcpdl.compute.model import ApiCall
from gcpdl.deadline import Deadline, backoff
from gcpdl.errors import CredentialsError, GcpdlError, OperationFailed

MAX_ATTEMPTS = 6  # per request; backoff 0.5, 1, 2, 4, 8 s (capped by the deadline)
BACKOFF_BASE = 0.5
CONNECT_ATTEMPTS = 3  # a refused connection is rarely transient: say so within ~1.5 s
READ_TIMEOUT = 30.0  # seconds for one HTTP exchange

# kind -> (client class, method, resource keyword, resource message type, name keyword)
_MUTATIONS: dict[str, tuple[str, str, str | None, str | None, str | None]] = {
    "instances.insert": ("InstancesClient", "insert_unary", "instance_resource", "Instance", None),
    "instances.start": ("InstancesClient", "start_unary", None, None, "instance"),
    "instances.stop": ("InstancesClient", "stop_unary", None, None, "instance"),
    "instances.delete": ("InstancesClient", "delete_unary", None, None, "instance"),
    "instances.setMetadata": ("InstancesClient", "set_metadata_unary", "metadata_resource", "Metadata", "instance"),
    "instances.attachDisk": ("InstancesClient", "attach_disk_unary", "attached_disk_resource", "AttachedDisk", "instance"),
    "instances.detachDisk": ("InstancesClient", "detach_disk_unary", None, None, "instance"),
    "disks.insert": ("DisksClient", "insert_unary", "disk_resource", "Disk", None),
    "disks.delete": ("DisksClient", "delete_unary", None, None, "disk"),
    "firewalls.insert": ("FirewallsClient", "insert_unary", "firewall_resource", "Firewall", None),
    "firewalls.patch": ("FirewallsClient", "patch_unary", "firewall_resource", "Firewall", "firewall"),
    "firewalls.delete": ("FirewallsClient", "delete_unary", None, None, "firewall"),
    "resourcePolicies.insert": ("ResourcePoliciesClient", "insert_unary", "resource_policy_resource", "ResourcePolicy", None),
    "resourcePolicies.delete": ("ResourcePoliciesClient", "delete_unary", None, None, "resource_policy"),
}

PREFETCH_CLIENTS = ("InstancesClient", "ZoneOperationsClient", "GlobalOperationsClient", "FirewallsClient", "DisksClient")
_import_lock = threading.Lock()
_import_thread: threading.Thread | None = None


def prefetch() -> None:
    """Start importing google.cloud.compute_v1 in the background (idempotent).

    Also: the compute_v1 types are ~100k protobuf objects, and the interpreter's last garbage
    collection at exit walks them all (~0.3 s after the command's work is done). Freezing the
    heap at exit skips that walk; nothing gcpdl holds needs a cycle-collected finalizer then.
    """
    global _import_thread
    with _import_lock:
        if _import_thread is None:
            import atexit
            import gc

            atexit.register(gc.freeze)
            _import_thread = threading.Thread(target=_import_compute, name="gcpdl-import", daemon=True)
            _import_thread.start()


def _import_compute() -> None:
    """Only the modules gcpdl uses (see clients.compute_class): ~0.7 s instead of ~2.4 s."""
    from gcpdl.clients import compute_class, compute_types

    try:
        compute_types()
        for name in PREFETCH_CLIENTS:
            compute_class(name)
        import google.protobuf.json_format  # noqa: F401
    except Exception:  # pragma: no cover - surfaced again by the real import on the main path
        pass


class Compute:
    """One project's Compute Engine, as gcpdl uses it. Counts every HTTP request it makes."""

    def __init__(self, factory: ClientFactory, project: str, deadline_factory: Callable[..., Deadline] = Deadline):
        self.factory = factory
        self.project = project
        self.poll_interval = factory.settings.poll_interval
        # Retries back off from 0.5 s; a caller that polls faster than that (tests poll every
        # 0.02 s) wants its retries as quick.
        self.backoff_base = min(BACKOFF_BASE, self.poll_interval)
        self.new_deadline = deadline_factory
        self.calls = 0  # requests sent, for the bench and the --verbose summary
        self._lock = threading.Lock()

    def authorize(self, deadline: Deadline) -> None:
        """Fetch the access token now, once: threads that start without one would each fetch
        their own."""
        import requests
        from google.auth import exceptions as gexc
        from google.auth.transport.requests import Request

        self.factory.session  # noqa: B018 - builds the session on this thread
        creds = self.factory.credentials()
        attempt = 0
        while not creds.valid:
            try:
                creds.refresh(Request())
            except (requests.RequestException, gexc.GoogleAuthError) as e:
                self._transport_failure(e, attempt, deadline)
                attempt += 1

    # --- reads (raw REST JSON) ---------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.factory.compute_endpoint.rstrip("/") + path

    def get(self, path: str, deadline: Deadline, params: dict[str, str] | None = None, what: str = "") -> dict[str, Any]:
        """GET a Compute REST path; raise a mapped GcpdlError on failure."""
        return self._request("GET", path, deadline, params=params, what=what)

    def get_or_none(self, path: str, deadline: Deadline, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        try:
            return self._request("GET", path, deadline, params=params, not_found_ok=True)
        except _Missing:
            return None

    def aggregated(self, collection: str, deadline: Deadline, filter: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """zone -> items for an aggregatedList (all pages)."""
        out: dict[str, list[dict[str, Any]]] = {}
        params: dict[str, str] = {"returnPartialSuccess": "true", "maxResults": "500"}
        if filter:
            params["filter"] = filter
        key = {"instances": "instances", "acceleratorTypes": "acceleratorTypes", "machineTypes": "machineTypes", "disks": "disks"}[collection]
        while True:
            page = self.get(f"/compute/v1/projects/{self.project}/aggregated/{collection}", deadline, params=params)
            for scope, entry in (page.get("items") or {}).items():
                items = entry.get(key) or []
                if items:
                    out.setdefault(scope.rsplit("/", 1)[-1], []).extend(items)
            token = page.get("nextPageToken")
            if not token:
                return out
            params = {**params, "pageToken": token}

    def _request(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        params: dict[str, str] | None = None,
        body: Any = None,
        what: str = "",
        not_found_ok: bool = False,
    ) -> dict[str, Any]:
        import requests
        from google.auth import exceptions as gexc

        session = self.factory.session
        attempt = 0
        while True:
            deadline.check()
            with self._lock:
                self.calls += 1
            try:
                resp = session.request(
                    method, self.url(path), params=params, json=body,
                    timeout=max(1.0, min(READ_TIMEOUT, deadline.remaining())),
                )
            except (requests.RequestException, gexc.GoogleAuthError) as e:
                self._transport_failure(e, attempt, deadline)
                attempt += 1
                continue
            if resp.status_code < 400:
                return resp.json() if resp.content else {}
            try:
                payload = resp.json()
            except ValueError:
                payload = {"error": {"code": resp.status_code, "message": resp.text[:300]}}
            err = cerrors.from_rest(resp.status_code, payload)
            if err.retryable and attempt + 1 < MAX_ATTEMPTS:
                deadline.pause(backoff(attempt, self.backoff_base))
                attempt += 1
                continue
            if not_found_ok and resp.status_code == 404 and f"'projects/{self.project}' was not found" not in err.message:
                raise _Missing()
            raise cerrors.to_gcpdl(err, self.project, what)

    # --- mutations (google-cloud-compute) ----------------------------------------------------
    def clients_for(self, kinds: list[str]) -> None:
        """Build the clients these calls need now, on this thread (the factory is not locked)."""
        for kind in kinds:
            self.factory.compute(_MUTATIONS[kind][0])
        self.factory.compute("ZoneOperationsClient")
        self.factory.compute("GlobalOperationsClient")
        if any(k.startswith("resourcePolicies.") for k in kinds):
            self.factory.compute("RegionOperationsClient")

    def execute(self, call: ApiCall, deadline: Deadline) -> dict[str, Any]:
        """Send one ApiCall; return the operation as REST JSON (not yet waited for)."""
        from google.protobuf import json_format

        from gcpdl.clients import compute_types

        compute_v1 = compute_types()  # the message types only, not the whole package

        client_name, method_name, res_kw, res_type, name_kw = _MUTATIONS[call.kind]
        client = self.factory.compute(client_name)
        kwargs: dict[str, Any] = {"project": call.project, "request_id": str(uuid.uuid4())}
        if call.zone:
            kwargs["zone"] = call.zone
        if call.region:
            kwargs["region"] = call.region
        if call.kind == "instances.detachDisk":
            kwargs["device_name"] = call.query["deviceName"]
        if name_kw:
            kwargs[name_kw] = call.resource
        for key, value in call.query.items():  # query parameters (discardLocalSsd=true), by their field names
            kwargs[re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()] = {"true": True, "false": False}.get(value, value)
        if res_kw:
            # the dry-run's body, parsed into the library's message: the same request goes out
            kwargs[res_kw] = getattr(compute_v1, res_type).from_json(json.dumps(call.body))  # type: ignore[arg-type]
        request_cls = _request_type(compute_v1, client_name, method_name)
        request = request_cls(**kwargs)
        method = getattr(client, method_name)
        op = self._library_call(
            lambda timeout: method(request=request, retry=None, timeout=timeout), deadline, _what(call)
        )
        return json_format.MessageToDict(compute_v1.Operation.pb(op))

    def _library_call(self, fn: Callable[[float], Any], deadline: Deadline, what: str) -> Any:
        """One compute_v1 call with gcpdl's retries (429/5xx/connection) under ``deadline``.
        Mutations are safe to repeat: each carries one requestId across its attempts."""
        import requests
        from google.api_core import exceptions as gapi
        from google.auth import exceptions as gexc

        attempt = 0
        while True:
            deadline.check()
            with self._lock:
                self.calls += 1
            try:
                return fn(max(1.0, min(READ_TIMEOUT, deadline.remaining())))
            except gapi.GoogleAPICallError as e:
                err = cerrors.from_exception(e)
                if err.retryable and attempt + 1 < MAX_ATTEMPTS:
                    deadline.pause(backoff(attempt, self.backoff_base))
                    attempt += 1
                    continue
                raise cerrors.to_gcpdl(err, self.project, what) from None
            except (requests.RequestException, gexc.GoogleAuthError) as e:
                self._transport_failure(e, attempt, deadline)
                attempt += 1

    def _transport_failure(self, e: BaseException, attempt: int, deadline: Deadline) -> None:
        """Pause before another attempt, or raise the GcpdlError that explains the failure."""
        import requests
        from google.auth import exceptions as gexc

        from gcpdl.clients import clip, token_error

        fix = "Run: gcloud auth application-default login"
        if isinstance(e, gexc.DefaultCredentialsError):
            raise CredentialsError(f"No Google credentials found ({clip(str(e).splitlines()[0], 160)}).", fix=fix) from None
        token_uri = getattr(getattr(self.factory, "_credentials", None), "_token_uri", None)
        refused = token_error(e, token_uri)
        if isinstance(e, gexc.RefreshError) and isinstance(refused, CredentialsError):
            raise refused from None  # Google said no: no use retrying
        if attempt + 1 < CONNECT_ATTEMPTS:
            deadline.pause(backoff(attempt, self.backoff_base))
            return
        if isinstance(e, requests.RequestException):
            raise GcpdlError(
                f"Cannot reach Compute Engine at {self.factory.compute_endpoint} ({type(e).__name__}).",
                fix="Check your network, or GCPDL_COMPUTE_ENDPOINT if you set one.",
            ) from None
        raise refused from None

    def wait(self, op: dict[str, Any], deadline: Deadline, what: str = "") -> dict[str, Any]:
        """Wait for an operation with the operations client's server-side ``wait``, re-asking at
        ``poll_interval`` while it is not DONE; raise the operation's own error if it failed.

        ExtendedOperation.result() is not used: its poller ignores our endpoint, and it returns
        silently on an error without httpErrorStatusCode.
        """
        from google.protobuf import json_format

        from gcpdl.clients import compute_types

        compute_v1 = compute_types()

        zone = (op.get("zone") or "").rsplit("/", 1)[-1] or None
        region = (op.get("region") or "").rsplit("/", 1)[-1] or None
        if zone:
            client, scope = self.factory.compute("ZoneOperationsClient"), {"zone": zone}
        elif region:
            client, scope = self.factory.compute("RegionOperationsClient"), {"region": region}
        else:
            client, scope = self.factory.compute("GlobalOperationsClient"), {}
        while op.get("status") != "DONE":
            # the server-side wait returns when the operation is done (or after ~2 min): ask again
            # at once the first time, then every poll_interval
            deadline.pause(self.poll_interval if op.get("_polled") else 0)
            name = op["name"]
            res = self._library_call(
                lambda timeout: client.wait(project=self.project, operation=name, retry=None, timeout=timeout, **scope),
                deadline, what,
            )
            op = json_format.MessageToDict(compute_v1.Operation.pb(res))
            op["_polled"] = True
        op.pop("_polled", None)
        if op.get("error", {}).get("errors"):
            raise operation_error(op, self.project, what)
        return op

    def run(self, call: ApiCall, deadline: Deadline) -> dict[str, Any]:
        """execute + wait."""
        return self.wait(self.execute(call, deadline), deadline, _what(call))


class _Missing(Exception):
    pass


def operation_error(op: dict[str, Any], project: str, what: str = "") -> GcpdlError:
    err = cerrors.from_operation(op)
    mapped = cerrors.to_gcpdl(err, project, what)
    if isinstance(mapped, OperationFailed) or type(mapped) is GcpdlError:
        mapped = OperationFailed(f"{what or 'The operation'} failed with {err.code}: {err.message}", code=err.code, fix=mapped.fix)
    mapped.api_error = err  # type: ignore[attr-defined]
    return mapped


def _what(call: ApiCall) -> str:
    noun = {"instances": "VM", "disks": "Disk", "firewalls": "Firewall rule",
            "resourcePolicies": "Placement policy"}[call.kind.split(".")[0]]
    return f"{noun} {call.resource}"


def _request_type(compute_v1: Any, client_name: str, method_name: str) -> Any:
    # insert_unary on InstancesClient takes InsertInstanceRequest, patch on Firewalls
    # PatchFirewallRequest, set_metadata SetMetadataInstanceRequest...
    verb = "".join(p.capitalize() for p in method_name.removesuffix("_unary").split("_"))
    noun = client_name.removesuffix("sClient")
    if noun.endswith("ie"):  # ResourcePoliciesClient -> InsertResourcePolicyRequest
        noun = noun[:-2] + "y"
    return getattr(compute_v1, f"{verb}{noun}Request")


__all__ = ["Compute", "prefetch", "operation_error"]
