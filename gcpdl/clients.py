"""The one factory for every Google client and credential.

Endpoints and credentials are injected here and nowhere else, so the fake Compute server, the
storage stand-ins and a Private Service Connect endpoint all plug in without patching. Google
libraries are imported inside the methods: `gcpdl --help` must not pay for them.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from gcpdl.errors import ConfigError, CredentialsError
from gcpdl.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import google.auth.credentials

COMPUTE_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
STORAGE_READ_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_only"]
DEFAULT_COMPUTE_ENDPOINT = "https://compute.googleapis.com"
DEFAULT_SERVICEUSAGE_ENDPOINT = "https://serviceusage.googleapis.com"
DEFAULT_RESOURCEMANAGER_ENDPOINT = "https://cloudresourcemanager.googleapis.com"
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


class ClientFactory:
    def __init__(self, settings: Settings, credentials: "google.auth.credentials.Credentials | None" = None):
        self.settings = settings
        self._credentials = credentials
        self._adc_project: str | None = None
        self._clients: dict[str, Any] = {}

    # --- credentials -------------------------------------------------------------------------
    def credentials(self) -> "google.auth.credentials.Credentials":
        """Application Default Credentials, and nothing hand-rolled (a key file named by
        GOOGLE_APPLICATION_CREDENTIALS is honoured with its own token_uri)."""
        if self._credentials is None:
            import google.auth
            from google.auth import exceptions as gexc

            try:
                creds, project = google.auth.default(scopes=COMPUTE_SCOPES)
            except gexc.DefaultCredentialsError as e:
                first = str(e).split("\n")[0].split(". ")[0]
                raise CredentialsError(f"No Google credentials found ({first}).", fix=ADC_FIX) from None
            self._credentials, self._adc_project = creds, project
        return self._credentials

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

    @property
    def resourcemanager_endpoint(self) -> str:
        """Root of the Resource Manager REST API (the projects you can see)."""
        return (self.settings.resourcemanager_endpoint or DEFAULT_RESOURCEMANAGER_ENDPOINT).rstrip("/")

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
