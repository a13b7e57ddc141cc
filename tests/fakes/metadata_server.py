"""A GCE metadata server stand-in, answering like the real one for Google's own guest software.

Built from what the real clients ask for (read in their source, Debian bookworm's versions):
- google_guest_agent 20211116: ``GET /computeMetadata/v1/?recursive=true&alt=json
  [&wait_for_change=true&timeout_sec=60]&last_etag=E`` (ETag long poll), ``PUT
  /computeMetadata/v1/instance/guest-attributes/hostkeys/<type>`` (first boot) and
  ``guest-agent/sshable``.
- google_metadata_script_runner: ``/project/project-id``,
  ``/instance/attributes/?recursive=true&alt=json&timeout_sec=10&last_etag=NONE``.
- google-compute-engine-oslogin 20210907 (NSS module, google_authorized_keys, PAM,
  google_oslogin_nss_cache): ``/computeMetadata/v1/oslogin/users?username=|uid=|pagesize=
  [&pagetoken=]``, ``/oslogin/groups?pagesize=|email=|groupname=|gid=``,
  ``/oslogin/authorize?email=E&policy=login|adminLogin``. Every OS Login path answers 404 while
  OS Login is off in metadata, which the NSS module reads as "not an OS Login VM". The OS Login
  answers come from the state's ``oslogin`` entry, or, when it names a ``source`` (a unix
  socket), from whatever serves that socket at each request (the OS Login API stand-in's state).
- gcpdl's startup script: curl PUT/GET of guest attributes with ``Metadata-Flavor: Google``.

Rules of the real server kept here: the ``Metadata-Flavor: Google`` request header is required
(403 without it, and with ``X-Forwarded-For``), every answer carries ``Metadata-Flavor: Google``;
a directory without ``recursive`` lists its entries (``name/`` for directories); recursive JSON
spells directory keys in camelCase but keeps custom ``attributes`` keys as written; guest
attributes are accepted only while ``enable-guest-attributes`` is TRUE (instance, else project).

The test side (``control=True`` listener, a unix socket in the namespace fixture) also has
``/_fake/...``: read or merge the state, list every guest-attribute write with its time, and
answer the Compute API's ``getGuestAttributes`` shape ({"queryValue": {"items": [...]}}).
Run inside a namespace: ``python -m tests.fakes.metadata_server --listen 169.254.169.254:80
--unix PATH --state FILE`` (tests/fakes/guest_init.py starts it in-process instead).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.client
import http.server
import json
import os
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/computeMetadata/v1"
WAIT_CAP = 60.0  # longest long poll, whatever timeout_sec asks for


def _camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "y")


def default_state() -> dict[str, Any]:
    """A plain CPU VM, as the real server describes one. Tests change what they need."""
    return {
        "instance": {
            "id": 4520031799277581234,
            "name": "lab",
            "hostname": "lab.us-central1-a.c.test-project.internal",
            "zone": "projects/123456789012/zones/us-central1-a",
            # not e2-*: the agent runs `sysctl vm.overcommit_memory=1` for e2 machine types
            "machine-type": "projects/123456789012/machineTypes/n1-standard-4",
            "image": "projects/debian-cloud/global/images/debian-12-bookworm-v20261201",
            "cpu-platform": "Intel Broadwell",
            "description": "",
            "tags": ["gcpdl-lab"],
            "scheduling": {"automatic-restart": "TRUE", "on-host-maintenance": "TERMINATE", "preemptible": "FALSE"},
            "attributes": {},
            # numbered directories (network-interfaces/0/, access-configs/0/) are JSON arrays in
            # the recursive answer; the agent's Go structs fail to parse anything else
            "network-interfaces": [
                {
                    "ip": "10.128.0.2",
                    "mac": "42:01:0a:80:00:02",
                    "mtu": "1460",
                    "network": "projects/123456789012/networks/default",
                    "subnetmask": "255.255.240.0",
                    "gateway": "10.128.0.1",
                    "dns-servers": ["169.254.169.254"],
                    "forwarded-ips": [],
                    "ip-aliases": [],
                    "target-instance-ips": [],
                    "access-configs": [{"external-ip": "203.0.113.7", "type": "ONE_TO_ONE_NAT"}],
                }
            ],
            "service-accounts": {
                "default": {
                    "email": "123456789012-compute@developer.gserviceaccount.com",
                    "aliases": ["default"],
                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                },
                "123456789012-compute@developer.gserviceaccount.com": {
                    "email": "123456789012-compute@developer.gserviceaccount.com",
                    "aliases": ["default"],
                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                },
            },
            "maintenance-event": "NONE",
            "preempted": "FALSE",
        },
        "project": {
            "project-id": "test-project",
            "numeric-project-id": "123456789012",
            "attributes": {},
        },
        # OS Login: login profiles the API would return for users of this VM, and who may log in
        "oslogin": {"profiles": [], "groups": [], "authorize": {}},
    }


@dataclass
class GuestAttributeWrite:
    at: float  # time.time() when the server received it
    namespace: str
    key: str
    value: str


@dataclass
class MetadataState:
    data: dict[str, Any] = field(default_factory=default_state)
    guest_attributes: dict[tuple[str, str], str] = field(default_factory=dict)
    writes: list[GuestAttributeWrite] = field(default_factory=list)
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, method, path?query)
    cond: threading.Condition = field(default_factory=threading.Condition)

    # --- metadata tree -------------------------------------------------------------------
    def etag(self) -> str:
        blob = json.dumps(self.data, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:16]

    def merge(self, patch: dict[str, Any]) -> None:
        """Deep-merge ``patch`` into the state (a None value deletes the key); wakes long polls."""

        def apply(dst: dict, src: dict) -> None:
            for k, v in src.items():
                if v is None:
                    dst.pop(k, None)
                elif isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "attributes":
                    apply(dst[k], v)
                elif isinstance(v, dict) and k == "attributes":
                    dst.setdefault(k, {})
                    for ak, av in v.items():
                        if av is None:
                            dst[k].pop(ak, None)
                        else:
                            dst[k][ak] = str(av)
                else:
                    dst[k] = copy.deepcopy(v)

        with self.cond:
            apply(self.data, patch)
            self.cond.notify_all()

    def attribute(self, name: str) -> str | None:
        """An attribute as the guest sees it: instance value, else project value."""
        with self.cond:
            inst = self.data["instance"]["attributes"]
            if name in inst:
                return inst[name]
            return self.data["project"]["attributes"].get(name)

    def oslogin_enabled(self) -> bool:
        return _truthy(self.attribute("enable-oslogin") or "")

    def guest_attributes_enabled(self) -> bool:
        return _truthy(self.attribute("enable-guest-attributes") or "")

    # --- guest attributes ----------------------------------------------------------------
    def put_guest_attribute(self, namespace: str, key: str, value: str) -> None:
        with self.cond:
            self.guest_attributes[(namespace, key)] = value
            self.writes.append(GuestAttributeWrite(time.time(), namespace, key, value))
            self.cond.notify_all()

    def query(self, query_path: str = "") -> dict[str, Any]:
        """The Compute API's instances.getGuestAttributes answer for ``queryPath``."""
        ns, _, key = query_path.strip("/").partition("/")
        with self.cond:
            items = [
                {"namespace": n, "key": k, "value": v}
                for (n, k), v in sorted(self.guest_attributes.items())
                if (not ns or n == ns) and (not key or k == key)
            ]
        return {"kind": "compute#guestAttributes", "queryPath": query_path, "queryValue": {"items": items}}


def _resolve(tree: Any, parts: list[str]) -> Any:
    node = tree
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


def _to_json(node: Any, raw_keys: bool = False) -> Any:
    if isinstance(node, dict):
        return {
            (k if raw_keys else _camel(k)): _to_json(v, raw_keys=raw_keys or k == "attributes")
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_to_json(v, raw_keys) for v in node]
    return node


def _listing(node: Any) -> str:
    if isinstance(node, dict):
        return "".join(f"{k}/\n" if isinstance(v, (dict, list)) else f"{k}\n" for k, v in node.items())
    if isinstance(node, list):
        return "".join(f"{i}/\n" if isinstance(v, (dict, list)) else f"{v}\n" for i, v in enumerate(node))
    return str(node)


def fetch_oslogin_source(path: str, timeout: float = 30.0) -> dict[str, Any]:
    """``GET /oslogin`` over the unix socket ``path``: {"profiles", "groups", "authorize"} as the
    OS Login service holds them now. On GCE the metadata server asks the OS Login backend on
    every /oslogin request; a test points ``oslogin.source`` at a socket the host serves (see
    tests/fixtures/oslogin.py, ``serve_metadata_source``) so the guest sees what gcpdl imported."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        conn = http.client.HTTPConnection("oslogin-source", timeout=timeout)
        conn.sock = sock
        conn.request("GET", "/oslogin")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        data = json.loads(body)
    finally:
        sock.close()
    return {"profiles": data.get("profiles", []), "groups": data.get("groups", []),
            "authorize": data.get("authorize", {})}


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "Metadata Server for VM"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    state: MetadataState
    control: bool = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet; see state.requests
        pass

    def address_string(self) -> str:  # unix sockets have no peer address
        return "local"

    # --- plumbing ------------------------------------------------------------------------
    def _send(self, code: int, body: str | bytes, ctype: str = "application/text", etag: str | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code: int, obj: Any, etag: str | None = None) -> None:
        self._send(code, json.dumps(obj), "application/json", etag)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _route(self) -> tuple[str, dict[str, str]] | None:
        url = urlsplit(self.path)
        self.state.requests.append((time.time(), self.command, self.path))
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = unquote(url.path)
        if self.control and path.startswith("/_fake/"):
            self._control(path, query)
            return None
        if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
            self._send(403, "Missing required header: Metadata-Flavor\n", "text/html")
            return None
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            self._send(404, "Not Found\n", "text/html")
            return None
        return path[len(PREFIX):], query

    def do_GET(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        path, query = routed
        if path.startswith("/oslogin/"):
            return self._oslogin(path[len("/oslogin/"):], query)
        if path.startswith("/instance/guest-attributes"):
            return self._get_guest_attribute(path, query)
        self._metadata(path, query)

    def do_PUT(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        path, _ = routed
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["instance", "guest-attributes"] or len(parts) != 4:
            self._send(405, "Method Not Allowed\n", "text/html")
            return
        value = self._body().decode(errors="replace")
        if not self.state.guest_attributes_enabled():
            self._send(403, "Guest attributes endpoint access is disabled.\n", "text/html")
            return
        self.state.put_guest_attribute(parts[2], parts[3], value)
        self._send(200, "")

    def do_POST(self) -> None:  # noqa: N802 - control API, and OS Login session calls (2FA, unused)
        routed = self._route()
        if routed is None:
            return
        self._send(404, "Not Found\n", "text/html")

    def do_DELETE(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        parts = [p for p in routed[0].split("/") if p]
        if parts[:2] == ["instance", "guest-attributes"] and len(parts) == 4:
            with self.state.cond:
                self.state.guest_attributes.pop((parts[2], parts[3]), None)
            self._send(200, "")
            return
        self._send(405, "Method Not Allowed\n", "text/html")

    # --- metadata ------------------------------------------------------------------------
    def _metadata(self, path: str, query: dict[str, str]) -> None:
        state = self.state
        parts = [p for p in path.split("/") if p]
        is_dir_request = path.endswith("/") or not parts
        if _truthy(query.get("wait_for_change", "")):
            last = query.get("last_etag", "NONE")
            try:
                timeout = min(float(query.get("timeout_sec", WAIT_CAP)), WAIT_CAP)
            except ValueError:
                timeout = WAIT_CAP
            with state.cond:
                if last not in ("", "NONE") and last == state.etag():
                    state.cond.wait_for(lambda: state.etag() != last, timeout=timeout)
        with state.cond:
            etag = state.etag()
            try:
                tree = {"instance": state.data["instance"], "project": state.data["project"]}
                node = copy.deepcopy(_resolve(tree, parts))
            except KeyError:
                self._send(404, "Not Found\n", "text/html")
                return
        recursive = _truthy(query.get("recursive", ""))
        alt_json = query.get("alt") == "json"
        if isinstance(node, (dict, list)):
            if recursive or alt_json:
                raw = bool(parts) and parts[-1] == "attributes"
                self._json(200, _to_json(node, raw_keys=raw), etag)
            elif not is_dir_request:
                # the real server redirects "dir" to "dir/"
                self.send_response(301)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Location", self.path.split("?")[0] + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(200, _listing(node), etag=etag)
            return
        if alt_json:
            self._json(200, node, etag)
        else:
            self._send(200, str(node), etag=etag)

    def _get_guest_attribute(self, path: str, query: dict[str, str]) -> None:
        parts = [p for p in path.split("/") if p][2:]
        if not self.state.guest_attributes_enabled():
            self._send(403, "Guest attributes endpoint access is disabled.\n", "text/html")
            return
        with self.state.cond:
            attrs = dict(self.state.guest_attributes)
        if len(parts) == 2:
            if tuple(parts) in attrs:
                self._send(200, attrs[(parts[0], parts[1])])
            else:
                self._send(404, "Not Found\n", "text/html")
            return
        if len(parts) == 1:
            keys = [k for (n, k) in attrs if n == parts[0]]
            if not keys:
                self._send(404, "Not Found\n", "text/html")
            elif _truthy(query.get("recursive", "")) or query.get("alt") == "json":
                self._json(200, {k: attrs[(parts[0], k)] for k in keys})
            else:
                self._send(200, "".join(f"{k}\n" for k in keys))
            return
        namespaces = sorted({n for (n, _) in attrs})
        self._send(200, "".join(f"{n}/\n" for n in namespaces))

    # --- OS Login ------------------------------------------------------------------------
    def _oslogin(self, what: str, query: dict[str, str]) -> None:
        state = self.state
        if not state.oslogin_enabled():
            self._send(404, "Not Found\n", "text/html")
            return
        with state.cond:
            osl = copy.deepcopy(state.data["oslogin"])
        if osl.get("source"):  # live, from the OS Login service's state, as on GCE
            try:
                osl = fetch_oslogin_source(osl["source"])
            except (OSError, ValueError, http.client.HTTPException) as e:
                self._send(503, f"OS Login backend unavailable: {type(e).__name__}\n", "text/html")
                return
        profiles = osl.get("profiles", [])

        def account(p: dict) -> dict:
            return (p.get("posixAccounts") or [{}])[0]

        if what == "users":
            if "username" in query or "uid" in query:
                if "username" in query:
                    found = [p for p in profiles if account(p).get("username") == query["username"]]
                else:
                    found = [p for p in profiles if str(account(p).get("uid")) == query["uid"]]
                if not found:
                    self._send(404, "Not Found\n", "text/html")
                    return
                self._json(200, {"loginProfiles": [found[0]]})
                return
            if "groupname" in query:
                self._json(200, {"usernames": [], "nextPageToken": "0"})
                return
            # paged listing for google_oslogin_nss_cache: a last page says nextPageToken "0"
            if query.get("pagetoken"):
                self._json(200, {"nextPageToken": "0"})
            else:
                self._json(200, {"loginProfiles": [{"name": p.get("name"), "posixAccounts": p.get("posixAccounts")} for p in profiles], "nextPageToken": "end"})
            return
        if what == "groups":
            groups = osl.get("groups", [])
            if "groupname" in query:
                found = [g for g in groups if g.get("name") == query["groupname"]]
            elif "gid" in query:
                found = [g for g in groups if str(g.get("gid")) == query["gid"]]
            else:
                found = groups
            if ("groupname" in query or "gid" in query) and not found:
                self._send(404, "Not Found\n", "text/html")
                return
            self._json(200, {"posixGroups": found, "nextPageToken": "0"})
            return
        if what == "authorize":
            policy = query.get("policy", "login")
            granted = bool((osl.get("authorize", {}).get(query.get("email", "")) or {}).get(policy, False))
            self._json(200, {"success": granted})
            return
        self._send(404, "Not Found\n", "text/html")

    # --- test control --------------------------------------------------------------------
    def _control(self, path: str, query: dict[str, str]) -> None:
        state = self.state
        if path == "/_fake/state" and self.command == "GET":
            with state.cond:
                self._json(200, state.data)
        elif path == "/_fake/state" and self.command in ("POST", "PATCH"):
            state.merge(json.loads(self._body() or b"{}"))
            self._json(200, {"etag": state.etag()})
        elif path == "/_fake/guest-attributes" and self.command == "GET":
            self._json(200, state.query(query.get("queryPath", "")))
        elif path == "/_fake/writes" and self.command == "GET":
            with state.cond:
                self._json(200, [w.__dict__ for w in state.writes])
        elif path == "/_fake/requests" and self.command == "GET":
            self._json(200, list(state.requests))
        else:
            self._send(404, "no such control path\n")

    do_PATCH = do_POST


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler(state: MetadataState, control: bool) -> type[Handler]:
    return type("BoundHandler", (Handler,), {"state": state, "control": control})


def serve(state: MetadataState, listen: tuple[str, int] | None = None, unix: str | None = None) -> list[socketserver.BaseServer]:
    """Start the stand-in on a TCP address (what the guest uses) and/or a unix socket with the
    test-control API; returns the servers, each served by a daemon thread."""
    servers: list[socketserver.BaseServer] = []
    if listen:
        servers.append(_TCPServer(listen, _handler(state, control=False)))
    if unix:
        try:
            os.unlink(unix)
        except FileNotFoundError:
            pass
        servers.append(_UnixServer(unix, _handler(state, control=True)))
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return servers


def main() -> None:  # pragma: no cover - used inside the namespace
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="169.254.169.254:80")
    p.add_argument("--unix")
    p.add_argument("--state", help="JSON patch applied over the default state")
    a = p.parse_args()
    state = MetadataState()
    if a.state:
        with open(a.state) as f:
            state.merge(json.load(f))
    host, _, port = a.listen.rpartition(":")
    serve(state, (host, int(port)), a.unix)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
