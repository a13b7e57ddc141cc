"""Where configuration comes from, in order: flags > env > gcpdl config file (named profiles) >
the active gcloud configuration > the Application Default Credentials' project.

Pure and fast: nothing here imports a Google library. The ADC project is looked up by the
client factory only when nothing else named a project.
"""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from gcpdl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_POLL_INTERVAL = 2.0  # seconds between operation polls; tests set GCPDL_POLL_INTERVAL
DEFAULT_CONFIRM_ABOVE = 3.0  # $/h above which `up` asks before creating
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "gcpdl"
DEFAULT_SSH_WAIT = 120.0  # a fresh VM's sshd and guest agent (which installs the key) take ~30-60 s

# Keys a user may put in the config file (top level = default profile, or [profiles.NAME]).
CONFIG_KEYS: dict[str, type] = {
    "project": str,
    "zone": str,
    "zones": list,  # candidate zones for failover, in order
    "compute_endpoint": str,
    "storage_endpoint": str,
    "serviceusage_endpoint": str,  # Service Usage API (`gcpdl doctor --fix` enables Compute there)
    "resourcemanager_endpoint": str,  # Resource Manager API (`gcpdl doctor --fix` lists your projects)
    "credits": float,
    "confirm_above": float,
    "poll_interval": float,
    "ssh_from": str,
    "ssh_port": int,  # the VM's sshd port (tests point it at a local sshd)
    "ssh_user": str,  # the login user on the VM
    "ssh_wait": float,  # seconds to wait for a booting VM's sshd to accept gcpdl's key
}


def config_dir() -> Path:
    env = os.environ.get("GCPDL_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("gcpdl", appauthor=False))


def state_dir() -> Path:
    """Keys, known_hosts and the ssh config include live here (not secret-free: keys are 0600)."""
    env = os.environ.get("GCPDL_STATE_DIR")
    if env:
        return Path(env)
    return config_dir()


def config_path() -> Path:
    return config_dir() / "config.toml"


@dataclass
class Settings:
    project: str | None = None
    zone: str | None = None
    zones: list[str] = field(default_factory=list)
    compute_endpoint: str | None = None
    storage_endpoint: str | None = None
    serviceusage_endpoint: str | None = None
    resourcemanager_endpoint: str | None = None
    credits: float | None = None
    confirm_above: float = DEFAULT_CONFIRM_ABOVE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    ssh_from: str | None = None
    ssh_port: int = DEFAULT_SSH_PORT
    ssh_user: str = DEFAULT_SSH_USER
    ssh_wait: float = DEFAULT_SSH_WAIT
    profile: str = "default"
    # where each resolved value came from, for `gcpdl config show`
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise ConfigError(f"Cannot read config file {path}: {e}", fix=f"Fix or remove {path}.")


def _profile_values(data: Mapping[str, Any], profile: str) -> dict[str, Any]:
    values = {k: v for k, v in data.items() if k in CONFIG_KEYS}
    if profile != "default":
        profiles = data.get("profiles", {})
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"No profile '{profile}' in {config_path()} (known: {known}).")
        values.update({k: v for k, v in profiles[profile].items() if k in CONFIG_KEYS})
    elif "default" in data.get("profiles", {}):
        values.update({k: v for k, v in data["profiles"]["default"].items() if k in CONFIG_KEYS})
    return values


def gcloud_config_dir() -> Path:
    env = os.environ.get("CLOUDSDK_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".config" / "gcloud"


def read_gcloud_config() -> dict[str, str]:
    """The active gcloud configuration's project, zone and compute endpoint override, if any."""
    base = gcloud_config_dir()
    name = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME")
    if not name:
        try:
            name = (base / "active_config").read_text().strip() or "default"
        except OSError:
            name = "default"
    path = base / "configurations" / f"config_{name}"
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return {}
    out: dict[str, str] = {}
    if parser.has_option("core", "project"):
        out["project"] = parser.get("core", "project")
    if parser.has_option("compute", "zone"):
        out["zone"] = parser.get("compute", "zone")
    if parser.has_option("api_endpoint_overrides", "compute"):
        # gcloud's override looks like https://host/compute/v1/ ; the client wants the host part
        out["compute_endpoint"] = _endpoint_root(parser.get("api_endpoint_overrides", "compute"))
    return out


def _endpoint_root(url: str) -> str:
    url = url.rstrip("/")
    for suffix in ("/compute/v1", "/compute/beta", "/storage/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def _coerce(key: str, value: Any) -> Any:
    typ = CONFIG_KEYS[key]
    try:
        if typ is list:
            if isinstance(value, str):
                return [z.strip() for z in value.split(",") if z.strip()]
            return list(value)
        return typ(value)
    except (TypeError, ValueError):
        kind = {float: "a number", list: "a list of zones", str: "text"}.get(typ, typ.__name__)
        raise ConfigError(f"Config value {key}={value!r} is not {kind}.")


def resolve(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    profile: str | None = None,
) -> Settings:
    """Resolve settings from all sources. ``flags`` holds only the values the user passed."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    profile = profile or env.get("GCPDL_PROFILE") or "default"

    layers: list[tuple[str, dict[str, Any]]] = [("flag", dict(flags))]
    env_values: dict[str, Any] = {}
    for key, names in {
        "project": ("GCPDL_PROJECT", "CLOUDSDK_CORE_PROJECT", "GOOGLE_CLOUD_PROJECT"),
        "zone": ("GCPDL_ZONE", "CLOUDSDK_COMPUTE_ZONE"),
        "zones": ("GCPDL_ZONES",),
        "compute_endpoint": ("GCPDL_COMPUTE_ENDPOINT",),
        "storage_endpoint": ("GCPDL_STORAGE_ENDPOINT", "STORAGE_EMULATOR_HOST"),
        "serviceusage_endpoint": ("GCPDL_SERVICEUSAGE_ENDPOINT",),
        "resourcemanager_endpoint": ("GCPDL_RESOURCEMANAGER_ENDPOINT",),
        "credits": ("GCPDL_CREDITS",),
        "confirm_above": ("GCPDL_CONFIRM_ABOVE",),
        "poll_interval": ("GCPDL_POLL_INTERVAL",),
        "ssh_from": ("GCPDL_SSH_FROM",),
        "ssh_port": ("GCPDL_SSH_PORT",),
        "ssh_user": ("GCPDL_SSH_USER",),
        "ssh_wait": ("GCPDL_SSH_WAIT",),
    }.items():
        for name in names:
            if env.get(name):
                env_values[key] = env[name]
                break
    layers.append(("env", env_values))
    layers.append(("config", _profile_values(_read_toml(config_path()), profile)))
    layers.append(("gcloud", read_gcloud_config()))

    settings = Settings(profile=profile)
    names = {f.name for f in fields(Settings)}
    for source, values in reversed(layers):  # lowest priority first, later layers overwrite
        for key, value in values.items():
            if key in names and key in CONFIG_KEYS:
                setattr(settings, key, _coerce(key, value))
                settings.sources[key] = source
    for key in ("compute_endpoint", "storage_endpoint", "serviceusage_endpoint", "resourcemanager_endpoint"):
        value = getattr(settings, key)
        if value:
            if "://" not in value:
                # STORAGE_EMULATOR_HOST is often given as host:port; the clients need a scheme
                value = "http://" + value
            setattr(settings, key, _endpoint_root(value))
    return settings


def write_config_value(key: str, value: str, profile: str = "default") -> Path:
    """`gcpdl config set KEY VALUE`: validate, then write the file atomically."""
    import tomli_w

    if key not in CONFIG_KEYS:
        raise ConfigError(f"Unknown config key '{key}'. Known keys: {', '.join(sorted(CONFIG_KEYS))}.")
    coerced = _coerce(key, value)
    path = config_path()
    data = _read_toml(path)
    target = data if profile == "default" else data.setdefault("profiles", {}).setdefault(profile, {})
    target[key] = coerced
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_bytes(tomli_w.dumps(data).encode())
    os.replace(tmp, path)
    return path
