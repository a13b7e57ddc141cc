"""Where configuration comes from, in order: flags > env > gcpdl config file (named profiles) >
the active gcloud configuration > the Application Default Credentials' project.

Pure and fast: nothing here imports a Google library. The ADC project is looked up by the
client factory only when nothing else named a project.
"""

from __future__ import annotations

import configparser
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from gcpdl.errors import ConfigError
from gcpdl.files import private_dir, write_private

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_POLL_INTERVAL = 2.0  # seconds between operation polls; tests set GCPDL_POLL_INTERVAL
DEFAULT_CONFIRM_ABOVE = 3.0  # $/h above which `up` asks before creating
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "gcpdl"
DEFAULT_SSH_WAIT = 120.0  # a fresh VM's sshd and guest agent (which installs the key) take ~30-60 s



# --- one table of validators: every setting is checked when it is set AND when it is loaded ----
# (flags, env vars, config.toml, gcloud), so a value that reaches ~/.ssh/config, a URL or an API
# request has always passed through here. Each parser returns the clean value or raises
# ValueError with what was expected.
# Always used with fullmatch: `$` would also match before a trailing newline.
PROJECT_RE = re.compile(r"(?:[a-z][-a-z0-9.]{0,61}[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")  # domain:project too
ZONE_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")  # a POSIX login name (also what OS Login makes)
MAX_POLL_INTERVAL = 60.0
MAX_SSH_WAIT = 3600.0


def _text(value: Any) -> str:
    """Text exactly as given: no stripping, so what is checked is what is used."""
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value


def parse_project(value: Any) -> str:
    text = _text(value)
    if not PROJECT_RE.fullmatch(text):
        raise ValueError("expected a project id like my-project-123 (6-30 lowercase letters, digits or hyphens, starting with a letter)")
    return text


def parse_zone(value: Any) -> str:
    text = _text(value)
    if not ZONE_RE.fullmatch(text):
        raise ValueError("expected a zone like us-central1-a")
    return text


def parse_zones(value: Any) -> list[str]:
    if isinstance(value, str):
        items: list[Any] = [z.strip(" ") for z in value.split(",")]  # "a, b": the space is the list's
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("expected zones separated by commas, like us-central1-a,us-east1-c")
    zones = [parse_zone(z) for z in items if not (isinstance(z, str) and not z.strip())]
    return list(dict.fromkeys(zones))


def parse_url(value: Any) -> str:
    """An http(s) endpoint root. host:port (as STORAGE_EMULATOR_HOST is often given) means http."""
    text = _text(value)
    if text and "://" not in text:
        text = "http://" + text
    from urllib.parse import urlsplit

    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("expected a URL like https://compute.googleapis.com")
    try:
        parts = urlsplit(text)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError("expected a URL like https://compute.googleapis.com") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("expected a URL like https://compute.googleapis.com")
    return _endpoint_root(text)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _number_between(low: float, high: float, low_open: bool = False, what: str = "a number") -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = _number(value)
        if number < low or (low_open and number == low) or number > high:
            lo = f"more than {low:g}" if low_open else f"{low:g} or more"
            hi = "" if high == math.inf else f" and at most {high:g}"
            raise ValueError(f"expected {what}, {lo}{hi}")
        return number

    return parse


def parse_port(value: Any) -> int:
    number = _number(value)
    if number != int(number) or not 1 <= number <= 65535:
        raise ValueError("expected a port number from 1 to 65535")
    return int(number)


def parse_user(value: Any) -> str:
    text = _text(value)
    if not USER_RE.fullmatch(text):
        raise ValueError("expected a login name: letters, digits, '_', '.' or '-', starting with a letter or '_' (at most 32)")
    return text


def parse_cidr(value: Any) -> str:
    import ipaddress

    text = _text(value)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError("expected an IPv4 address or range like 203.0.113.7/32") from None
    if net.version != 4:
        raise ValueError("only IPv4 addresses are supported")
    return str(net)


RESOURCE_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1035, as Compute names are
ACCOUNT_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def parse_resource_name(value: Any) -> str:
    text = _text(value)
    if not RESOURCE_NAME_RE.fullmatch(text):
        raise ValueError("expected a name of lowercase letters, digits and hyphens, starting with a letter (1-63)")
    return text


def parse_account(value: Any) -> str:
    text = _text(value)
    if not ACCOUNT_RE.fullmatch(text):
        raise ValueError("expected an email address like you@example.com")
    return text


@dataclass(frozen=True)
class Setting:
    parse: Callable[[Any], Any]
    env: tuple[str, ...] = ()


SETTINGS: dict[str, Setting] = {
    "project": Setting(parse_project, ("GCPDL_PROJECT", "CLOUDSDK_CORE_PROJECT", "GOOGLE_CLOUD_PROJECT")),
    "zone": Setting(parse_zone, ("GCPDL_ZONE", "CLOUDSDK_COMPUTE_ZONE")),
    "zones": Setting(parse_zones, ("GCPDL_ZONES",)),  # candidate zones for failover, in order
    "compute_endpoint": Setting(parse_url, ("GCPDL_COMPUTE_ENDPOINT",)),
    "storage_endpoint": Setting(parse_url, ("GCPDL_STORAGE_ENDPOINT", "STORAGE_EMULATOR_HOST")),
    "credits": Setting(_number_between(0, math.inf, what="an amount in USD"), ("GCPDL_CREDITS",)),
    "confirm_above": Setting(_number_between(0, math.inf, what="a price in USD per hour"), ("GCPDL_CONFIRM_ABOVE",)),
    "poll_interval": Setting(_number_between(0, MAX_POLL_INTERVAL, low_open=True, what="seconds"), ("GCPDL_POLL_INTERVAL",)),
    "ssh_from": Setting(parse_cidr, ("GCPDL_SSH_FROM",)),
    "ssh_port": Setting(parse_port, ("GCPDL_SSH_PORT",)),  # the VM's sshd port (tests point it at a local sshd)
    "ssh_user": Setting(parse_user, ("GCPDL_SSH_USER",)),  # the login user on the VM
    # seconds to wait for a booting VM's sshd to accept gcpdl's key
    "ssh_wait": Setting(_number_between(0, MAX_SSH_WAIT, low_open=True, what="seconds"), ("GCPDL_SSH_WAIT",)),
    "network": Setting(parse_resource_name, ("GCPDL_NETWORK",)),  # VPC network for new VMs (default: default)
    "subnet": Setting(parse_resource_name, ("GCPDL_SUBNET",)),  # its subnetwork (default: the region's own, or its only one)
    # the APIs OS Login needs (tests' stand-ins, or Private Service Connect): root URLs only
    "serviceusage_endpoint": Setting(parse_url, ("GCPDL_SERVICEUSAGE_ENDPOINT",)),  # doctor --fix enables Compute there
    "oslogin_endpoint": Setting(parse_url, ("GCPDL_OSLOGIN_ENDPOINT",)),
    "resourcemanager_endpoint": Setting(parse_url, ("GCPDL_RESOURCEMANAGER_ENDPOINT",)),  # doctor's permission checks; --fix's project list
    "iam_endpoint": Setting(parse_url, ("GCPDL_IAM_ENDPOINT",)),  # actAs on the VM's service account
    "oauth2_endpoint": Setting(parse_url, ("GCPDL_OAUTH2_ENDPOINT",)),  # tokeninfo: the account of user credentials
    "account": Setting(parse_account, ("GCPDL_ACCOUNT",)),  # the Google account gcpdl acts as (OS Login)
}
# Keys a user may put in the config file (top level = default profile, or [profiles.NAME]).
CONFIG_KEYS = tuple(SETTINGS)


def escaped(value: object) -> str:
    """User input inside a message: control characters escaped, so an error stays one line and
    a terminal escape sequence is shown, not run."""
    return str(value).encode("unicode_escape").decode()


def _show(value: Any) -> str:
    return f"'{escaped(value)}'" if isinstance(value, str) else repr(value)


def validate(key: str, value: Any, where: str) -> Any:
    """The clean value of setting ``key`` or one ConfigError naming the source and the fix."""
    try:
        return SETTINGS[key].parse(value)
    except ValueError as e:
        label, source, fix = key, "", None
        if where.startswith("--"):
            pass  # the flag is on the command line the user just typed
        elif where.startswith("$"):
            source, fix = f" (from {where[1:]})", f"Fix or unset {where[1:]}."
        elif where:
            source, fix = f" (in {where})", f"Fix it there, or run: gcpdl config set {key} VALUE"
        raise ConfigError(f"Invalid {label} {_show(value)}{source}: {e}.", fix=fix) from None


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
    oslogin_endpoint: str | None = None
    resourcemanager_endpoint: str | None = None
    iam_endpoint: str | None = None
    oauth2_endpoint: str | None = None
    account: str | None = None
    credits: float | None = None
    confirm_above: float = DEFAULT_CONFIRM_ABOVE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    ssh_from: str | None = None
    ssh_port: int = DEFAULT_SSH_PORT
    ssh_user: str = DEFAULT_SSH_USER
    ssh_wait: float = DEFAULT_SSH_WAIT
    network: str | None = None
    subnet: str | None = None
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


def _profiles(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    profiles = data.get("profiles", {})
    bad = not isinstance(profiles, dict) or any(not isinstance(v, dict) for v in profiles.values())
    if bad:
        raise ConfigError(
            f"In {path}, 'profiles' must hold tables like [profiles.work].",
            fix=f"Fix or remove 'profiles' in {path}.",
        )
    return profiles


def _profile_values(data: Mapping[str, Any], profile: str, path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    profiles = _profiles(data, path)
    values = {k: v for k, v in data.items() if k in SETTINGS}
    if profile != "default":
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"No profile '{profile}' in {path} (known: {known}).")
        values.update({k: v for k, v in profiles[profile].items() if k in SETTINGS})
    elif "default" in profiles:
        values.update({k: v for k, v in profiles["default"].items() if k in SETTINGS})
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


def resolve(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    profile: str | None = None,
) -> Settings:
    """Resolve settings from all sources. ``flags`` holds only the values the user passed."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    profile = profile or env.get("GCPDL_PROFILE") or "default"

    # (source, {key: value}, {key: where it was written}) from the highest priority down
    layers: list[tuple[str, dict[str, Any], dict[str, str]]] = [("flag", dict(flags), {k: "--" + k.replace("_", "-") for k in flags})]
    env_values: dict[str, Any] = {}
    env_where: dict[str, str] = {}
    for key, setting in SETTINGS.items():
        for name in setting.env:
            if env.get(name):
                env_values[key], env_where[key] = env[name], "$" + name
                break
    layers.append(("env", env_values, env_where))
    path = config_path()
    file_values = _profile_values(_read_toml(path), profile, path)
    layers.append(("config", file_values, {k: str(path) for k in file_values}))
    gcloud = read_gcloud_config()
    layers.append(("gcloud", gcloud, {k: f"the active gcloud configuration in {gcloud_config_dir()}" for k in gcloud}))

    settings = Settings(profile=profile)
    names = {f.name for f in fields(Settings)}
    for source, values, where in layers:  # highest priority first: the first value found wins
        for key, value in values.items():
            if key in names and key in SETTINGS and key not in settings.sources:
                setattr(settings, key, validate(key, value, where.get(key, source)))
                settings.sources[key] = source
    return settings


def write_config_value(key: str, value: str, profile: str = "default") -> Path:
    """`gcpdl config set KEY VALUE`: validate, then write the file atomically."""
    import tomli_w

    if key not in SETTINGS:
        raise ConfigError(f"Unknown config key {_show(key)}. Known keys: {', '.join(sorted(SETTINGS))}.")
    clean = validate(key, value, "")
    path = config_path()
    data = _read_toml(path)
    if profile == "default":
        target = data
    else:
        _profiles(data, path)
        target = data.setdefault("profiles", {}).setdefault(profile, {})
    target[key] = clean
    private_dir(path.parent)
    write_private(path, tomli_w.dumps(data))
    return path
