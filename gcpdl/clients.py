"""The one factory for every Google client and credential.

Endpoints and credentials are injected here and nowhere else, so the fake Compute server, the
storage stand-ins and a Private Service Connect endpoint all plug in without patching. Google
libraries are imported inside the methods: `gcpdl --help` must not pay for them.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from gcpdl.errors import ConfigError, CredentialsError, GcpdlError
from gcpdl.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import google.auth.credentials

COMPUTE_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
STORAGE_READ_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_only"]
DEFAULT_COMPUTE_ENDPOINT = "https://compute.googleapis.com"
DEFAULT_SERVICEUSAGE_ENDPOINT = "https://serviceusage.googleapis.com"
DEFAULT_OSLOGIN_ENDPOINT = "https://oslogin.googleapis.com"
DEFAULT_RESOURCEMANAGER_ENDPOINT = "https://cloudresourcemanager.googleapis.com"
DEFAULT_IAM_ENDPOINT = "https://iam.googleapis.com"
DEFAULT_OAUTH2_ENDPOINT = "https://oauth2.googleapis.com"
ADC_FIX = "Run: gcloud auth application-default login"


_compute_lock = threading.Lock()


def _compute_package() -> Any:
    """google.cloud.compute_v1 without running its __init__ up front.

    The package __init__ imports all ~90 service clients (~2.4 s here); gcpdl needs five. The
    package module is created from its spec but not executed, so submodules import on their own
    (~0.8 s for the types plus the services used). The first attribute the package itself does
    not have yet runs the real __init__ once, so ``from google.cloud import compute_v1;
    compute_v1.Anything`` keeps working for every other caller. (The library marks these imports
    lazy itself for Python 3.15, PEP 810.)
    """
    import sys

    with _compute_lock:  # `up` warms this on a thread while the main thread may ask too
        mod = sys.modules.get("google.cloud.compute_v1")
        return mod if mod is not None else _stub_compute_package()


def _stub_compute_package() -> Any:
    import importlib.util
    import sys

    name = "google.cloud.compute_v1"
    import google.cloud

    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:  # pragma: no cover - not installed
        raise ModuleNotFoundError(name)
    mod = importlib.util.module_from_spec(spec)
    loaded = [False]

    import os

    roots = list(spec.submodule_search_locations or [])

    def __getattr__(attr: str) -> Any:
        if loaded[0] or attr.startswith("__"):
            raise AttributeError(attr)
        if any(os.path.exists(os.path.join(r, attr)) or os.path.exists(os.path.join(r, attr + ".py")) for r in roots):
            # a submodule (`from google.cloud.compute_v1 import gapic_version`): let the import
            # system load just that one
            raise AttributeError(attr)
        loaded[0] = True
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return getattr(mod, attr)

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[name] = mod
    google.cloud.compute_v1 = mod  # type: ignore[attr-defined]
    return mod


def compute_class(name: str) -> Any:
    """A compute_v1 client class by name, importing only its own service module
    (InstancesClient -> google.cloud.compute_v1.services.instances)."""
    import importlib
    import re

    package = _compute_package()
    if name.endswith("Client"):
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name[: -len("Client")]).lower()
        try:
            module = importlib.import_module(f"{package.__name__}.services.{snake}")
            return getattr(module, name)
        except (ImportError, AttributeError):
            pass
    return getattr(package, name, None)


def compute_types() -> Any:
    """The compute_v1 message types module (Instance, Operation, request messages)."""
    import importlib

    _compute_package()
    return importlib.import_module("google.cloud.compute_v1.types.compute")


def adc_available() -> bool:
    """Whether Application Default Credentials are there to be found, without importing
    google-auth (a dry-run with no Google account must stay offline and fast): a key file named
    by GOOGLE_APPLICATION_CREDENTIALS, or gcloud's application-default login file."""
    import os

    from gcpdl.settings import gcloud_config_dir

    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return os.path.isfile(named)
    return (gcloud_config_dir() / "application_default_credentials.json").is_file()


KEY_FILE_VAR = "GOOGLE_APPLICATION_CREDENTIALS"
KEY_FILE_FIX = f"Fix it, point {KEY_FILE_VAR} at a valid key file, or unset it to use your gcloud login."


def _check_key_file() -> str | None:
    """The file GOOGLE_APPLICATION_CREDENTIALS names, checked before google-auth opens it (a
    folder there gives IsADirectoryError from deep inside google-auth)."""
    import os

    path = os.environ.get(KEY_FILE_VAR)
    if not path:
        return None
    if os.path.isdir(path):
        raise CredentialsError(
            f"{KEY_FILE_VAR} points at {path}, a folder, not a credentials file.",
            fix="Point it at a JSON key file, or unset it to use your gcloud login.",
        )
    return path


def _bad_key_file(path: str, error: BaseException) -> CredentialsError:
    """google-auth's errors carry (message, cause) tuples; say what is wrong with the file, in
    one line, and that the variable is what to fix (not `gcloud auth ... login`)."""
    import json
    import os

    cause = error.args[1] if len(error.args) > 1 and isinstance(error.args[1], BaseException) else None
    if not os.path.exists(path):
        why = "the file does not exist."
    elif isinstance(cause, json.JSONDecodeError) or isinstance(error, json.JSONDecodeError):
        why = "it is not valid JSON."
    elif isinstance(error, OSError):
        why = f"{error.strerror or type(error).__name__}."
    else:
        text = str(cause if cause is not None else (error.args[0] if error.args else error))
        why = " ".join(text.split()) or type(error).__name__
        why = why if why.endswith(".") else why + "."
    return CredentialsError(f"The credentials file {path} (named by {KEY_FILE_VAR}) cannot be used: {why}", fix=KEY_FILE_FIX)


# --- credential discovery: cheap signals before the metadata server -------------------------
# google-auth looks for the GCE metadata server last, by pinging it (3 tries with back-off: 3.1 to
# 3.4 s off GCE on a network that does not answer 169.254.169.254 at once). Off GCE that probe
# only delays "no credentials". The VM's firmware says "Google" on Compute Engine; a set
# GCE_METADATA_HOST says a metadata server is meant to answer. Only then does google-auth ping.
DMI_FILES = ("/sys/class/dmi/id/product_name", "/sys/class/dmi/id/bios_vendor")
QUOTA_WARNING = "end user credentials from Google Cloud SDK without a quota project"
QUOTA_NOTICE_MARK = "said-quota-project"  # in gcpdl's state dir: the quota notice was given


class _NoMetadataServer(Exception):
    """Raised through google.auth.default() by our transport when we are not on GCE."""


def on_gce() -> bool:
    """True when a GCE metadata server is expected here (cheap: two small local files, env)."""
    import os

    if os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT"):
        return True
    for path in DMI_FILES:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if f.read(64).strip().startswith("Google"):
                    return True
        except OSError:
            continue
    return False


class _OffGceRequest:
    """A google-auth transport for google.auth.default(): metadata-server requests fail at once
    (off GCE), anything else (an external account's project lookup) goes out normally."""

    def __init__(self) -> None:
        from google.auth.transport.requests import Request

        self._request = Request()

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        import os
        from urllib.parse import urlsplit

        metadata = {"169.254.169.254", "metadata.google.internal", "metadata", os.environ.get("GCE_METADATA_IP", "")}
        if urlsplit(url).netloc.lower() in metadata or urlsplit(url).hostname in metadata:
            raise _NoMetadataServer(url)
        return self._request(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)


def clip(text: str, limit: int) -> str:
    """``text`` shortened to at most ``limit`` characters at a word boundary, with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:(") + "…"


def token_error(e: BaseException, token_uri: str | None = None) -> GcpdlError:
    """The error for a failed token fetch: "cannot reach Google" with the likely cause for a
    network failure (DNS, proxy, refused, timeout), a credentials error otherwise."""
    import socket
    from urllib.parse import urlsplit

    from google.auth import exceptions as gexc

    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 12:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__ or next((a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)), None)
    text = " ".join(f"{type(x).__name__} {x}" for x in chain).lower()
    # requests' and urllib3's connection errors, or the socket's own (google-auth wraps them)
    network = isinstance(e, gexc.TransportError) or any(
        isinstance(x, (ConnectionError, TimeoutError, socket.gaierror))
        or any(w in type(x).__name__ for w in ("Connection", "Timeout", "ProxyError", "NameResolution", "MaxRetry"))
        for x in chain
    )
    if not network:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return CredentialsError(f"Could not get an access token: {clip(first, 200)}", fix=ADC_FIX)
    where = f" ({token_uri})" if token_uri else ""
    host = urlsplit(token_uri).hostname if token_uri else None
    dns = ("name or service not known", "nameresolution", "temporary failure in name resolution", "nodename nor servname")
    if any(isinstance(x, socket.gaierror) for x in chain) or any(w in text for w in dns):
        cause = f"the name {host} does not resolve (DNS)" if host else "a DNS lookup failed"
        fix = "Check your network and DNS, or a proxy (HTTPS_PROXY)."
    elif "proxy" in text:
        cause, fix = "the proxy refused or failed", "Check HTTPS_PROXY / HTTP_PROXY and NO_PROXY."
    elif "refused" in text:
        cause, fix = "connection refused", "Check your network, a firewall, or a proxy (HTTPS_PROXY)."
    elif "timed out" in text or "timeout" in text:
        cause, fix = "no answer in time", "Check your network, a firewall, or a proxy (HTTPS_PROXY)."
    else:
        cause, fix = "network error", "Check your network, a firewall, or a proxy (HTTPS_PROXY)."
    return GcpdlError(f"Cannot reach Google to get an access token{where}: {cause}.", fix=fix)


class ClientFactory:
    def __init__(self, settings: Settings, credentials: "google.auth.credentials.Credentials | None" = None,
                 on_notice: "Callable[[str], None] | None" = None):
        self.settings = settings
        self._credentials = credentials
        self._adc_project: str | None = None
        self._clients: dict[str, Any] = {}
        self.on_notice = on_notice  # a message for the user, said once (the CLI passes app.warn)

    # --- credentials -------------------------------------------------------------------------
    def credentials(self) -> "google.auth.credentials.Credentials":
        """Application Default Credentials, and nothing hand-rolled (a key file named by
        GOOGLE_APPLICATION_CREDENTIALS is honoured with its own token_uri)."""
        if self._credentials is None:
            import warnings

            import google.auth
            from google.auth import exceptions as gexc

            key_file = _check_key_file()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        creds, project = google.auth.default(scopes=COMPUTE_SCOPES, request=None if on_gce() else _OffGceRequest())
                    except _NoMetadataServer:
                        # the metadata server is google-auth's last resort: nothing else was found
                        raise gexc.DefaultCredentialsError("Your default credentials were not found. ") from None
            except (gexc.GoogleAuthError, OSError, ValueError) as e:
                if key_file is not None:
                    raise _bad_key_file(key_file, e) from None
                first = str(e).split("\n")[0].split(". ")[0]
                raise CredentialsError(f"No Google credentials found ({first}).", fix=ADC_FIX) from None
            for w in caught:
                if QUOTA_WARNING in str(w.message):
                    self._quota_notice()
                else:  # anything else google-auth warns about is re-issued unchanged
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            self._credentials, self._adc_project = creds, project
        return self._credentials

    def _quota_notice(self) -> None:
        """google-auth warns on every run (with a site-packages path) when user credentials name
        no quota project; say it once, in our words, and remember that it was said."""
        from gcpdl.settings import state_dir

        mark = state_dir() / QUOTA_NOTICE_MARK
        if self.on_notice is None or mark.exists():
            return
        project = self.settings.project or "PROJECT"
        self.on_notice(
            "Your Google login (application-default credentials) names no quota project, so some APIs may answer "
            f'"quota exceeded" or "API not enabled". Fix it once: gcloud auth application-default set-quota-project {project}'
        )
        try:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text("gcpdl explained the missing quota project once; delete this file to see it again.\n")
        except OSError:
            pass  # said again next time: better than never

    def project(self) -> str:
        """The resolved project; falls back to the ADC project as the last source."""
        if self.settings.project:
            return self.settings.project
        self.credentials()
        if self._adc_project:
            self.settings.project = self._adc_project
            self.settings.sources["project"] = "adc"
            return self._adc_project
        raise ConfigError(
            "No Google Cloud project set.",
            fix="Pass --project, set GCPDL_PROJECT, or run: gcpdl config set project PROJECT_ID",
        )

    # --- Compute Engine ----------------------------------------------------------------------
    @property
    def compute_endpoint(self) -> str:
        return self.settings.compute_endpoint or DEFAULT_COMPUTE_ENDPOINT

    @property
    def compute_base_url(self) -> str:
        """Root of the REST API, e.g. https://compute.googleapis.com/compute/v1"""
        return self.compute_endpoint.rstrip("/") + "/compute/v1"

    def compute(self, name: str) -> Any:
        """A google-cloud-compute client by class name, e.g. ``compute("InstancesClient")``.

        Operations clients (ZoneOperationsClient, GlobalOperationsClient, RegionOperationsClient)
        come from here too: the library's ExtendedOperation poller would otherwise be built
        without our client_options and poll the real endpoint.
        """
        if name not in self._clients:
            from google.api_core.client_options import ClientOptions
            cls = compute_class(name)
            if cls is None:
                raise AttributeError(f"google.cloud.compute_v1 has no {name}")
            self._clients[name] = cls(
                credentials=self.credentials(),
                transport="rest",
                client_options=ClientOptions(api_endpoint=self.compute_endpoint),
            )
        return self._clients[name]

    @cached_property
    def session(self) -> Any:
        """An authorized requests session for lean REST reads (google-auth's AuthorizedSession).

        Importing google.cloud.compute_v1 costs ~1.5 s; read-only paths that must answer fast
        (status) go through this session to the same endpoint with the same credentials.
        """
        from google.auth.transport.requests import AuthorizedSession

        return AuthorizedSession(self.credentials())

    # --- Service Usage (enabling APIs: `gcpdl doctor --fix`) -----------------------------------
    @property
    def serviceusage_endpoint(self) -> str:
        """Root of the Service Usage REST API; requests go through ``session``."""
        return (self.settings.serviceusage_endpoint or DEFAULT_SERVICEUSAGE_ENDPOINT).rstrip("/")

    # --- OS Login and the APIs its checks need (plain REST on the same session) ----------------
    @property
    def oslogin_endpoint(self) -> str:
        return (self.settings.oslogin_endpoint or DEFAULT_OSLOGIN_ENDPOINT).rstrip("/")

    @property
    def resourcemanager_endpoint(self) -> str:
        return (self.settings.resourcemanager_endpoint or DEFAULT_RESOURCEMANAGER_ENDPOINT).rstrip("/")

    @property
    def iam_endpoint(self) -> str:
        return (self.settings.iam_endpoint or DEFAULT_IAM_ENDPOINT).rstrip("/")

    @property
    def oauth2_endpoint(self) -> str:
        return (self.settings.oauth2_endpoint or DEFAULT_OAUTH2_ENDPOINT).rstrip("/")

    def oslogin(self) -> Any:
        """The OS Login helper for this factory (gcpdl.oslogin.OsLogin): one per factory, so the
        project's setting and the login profile are read once per command."""
        if "oslogin" not in self._clients:
            from gcpdl.oslogin import OsLogin

            self._clients["oslogin"] = OsLogin(self)
        return self._clients["oslogin"]

    # --- Cloud Storage -----------------------------------------------------------------------
    @property
    def storage_endpoint(self) -> str | None:
        return self.settings.storage_endpoint

    @property
    def storage_is_emulator(self) -> bool:
        """True when the storage endpoint came from STORAGE_EMULATOR_HOST (anonymous access)."""
        import os

        return bool(os.environ.get("STORAGE_EMULATOR_HOST")) and not os.environ.get("GCPDL_STORAGE_ENDPOINT") and (
            self.settings.sources.get("storage_endpoint") == "env"
        )

    def storage(self, project: str | None = None, anonymous: bool = False) -> Any:
        """A google-cloud-storage client. Honours GCPDL_STORAGE_ENDPOINT / STORAGE_EMULATOR_HOST."""
        from google.cloud import storage

        options = {"api_endpoint": self.storage_endpoint} if self.storage_endpoint else None
        if anonymous:
            from google.auth.credentials import AnonymousCredentials

            return storage.Client(project=project or "anonymous", credentials=AnonymousCredentials(), client_options=options)
        if self.storage_is_emulator and self._credentials is None:
            # An emulator: the library itself uses anonymous credentials under
            # STORAGE_EMULATOR_HOST. A GCPDL_STORAGE_ENDPOINT (e.g. Private Service Connect) is a
            # real endpoint and gets real credentials.
            from google.auth.credentials import AnonymousCredentials

            creds: Any = AnonymousCredentials()
        else:
            creds = self.credentials()
        return storage.Client(project=project or self.settings.project or "gcpdl", credentials=creds, client_options=options)
