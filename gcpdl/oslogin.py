"""OS Login: projects (and organisations) that set `enable-oslogin=TRUE` log users in by their
Google identity, not by `ssh-keys` metadata; the guest agent then removes ssh-keys users.

gcpdl does what `gcloud compute ssh` does there: it imports its own public key into the caller's
OS Login profile (``users.importSshPublicKey``, with an expiry, re-imported only when the key is
missing or close to expiring) and logs in as the POSIX user of that profile. It never imports a
key where OS Login is off (an imported key opens every OS Login VM the caller can reach) and
never changes a project's setting.

Reads and writes go as plain REST through the factory's AuthorizedSession, to endpoints that
come from the factory (GCPDL_OSLOGIN_ENDPOINT, ...). Nothing here imports a Google library at
module level. API reference: https://cloud.google.com/compute/docs/oslogin/rest
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import quote

from gcpdl.errors import ApiDisabled, CredentialsError, GcpdlError, NotFound, PermissionDenied

ENABLE_KEY = "enable-oslogin"
KEY_TTL = 24 * 3600.0  # an imported key expires after a day, as a lost laptop's key should
REFRESH_BEFORE = 3600.0  # re-import when less than this is left
HTTP_TIMEOUT = 30.0

LOGIN_PERMISSIONS = ("compute.instances.osLogin", "compute.instances.osAdminLogin")
ACT_AS = "iam.serviceAccounts.actAs"
ROLE_LOGIN = "roles/compute.osLogin"
ROLE_SA_USER = "roles/iam.serviceAccountUser"
ROLE_EXTERNAL = "roles/compute.osLoginExternalUser"

# the guest agent reads the flag with Go's strconv.ParseBool; gcpdl also ignores case
_ON = {"true", "t", "1"}
_OFF = {"false", "f", "0"}


# --- is OS Login on? ------------------------------------------------------------------------
def metadata_items(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """{key: value} from a REST ``metadata`` object ({"items": [{"key", "value"}]})."""
    return {i.get("key", ""): i.get("value") or "" for i in (metadata or {}).get("items") or []}


def flag(value: str | None) -> bool | None:
    """enable-oslogin's value as the guest agent reads it: None when unset or not a boolean."""
    if value is None:
        return None
    v = value.strip().lower()
    return True if v in _ON else False if v in _OFF else None


@dataclass(frozen=True)
class OsLoginSetting:
    enabled: bool
    source: str  # "instance", "project" or "default"
    value: str | None = None

    def describe(self) -> str:
        if self.source == "default":
            return "off (enable-oslogin is not set in project or instance metadata)"
        return f"{'on' if self.enabled else 'off'} ({self.source} metadata enable-oslogin={self.value})"


def detect(project: Mapping[str, str], instance: Mapping[str, str] | None = None) -> OsLoginSetting:
    """Instance metadata overrides project metadata, as on the VM."""
    for source, items in (("instance", instance or {}), ("project", project)):
        value = items.get(ENABLE_KEY)
        on = flag(value)
        if on is not None:
            return OsLoginSetting(on, source, value)
    return OsLoginSetting(False, "default")


# --- what the caller is, and what they may do ------------------------------------------------
@dataclass(frozen=True)
class LoginProfile:
    email: str
    username: str | None  # the primary POSIX account's user name; None until a first key import
    keys: tuple[tuple[str, int | None], ...] = ()  # ("type base64", expiry in µs or None)

    @classmethod
    def from_api(cls, email: str, data: Mapping[str, Any]) -> "LoginProfile":
        accounts = data.get("posixAccounts") or []
        primary = next((a for a in accounts if a.get("primary")), accounts[0] if accounts else {})
        keys = []
        for entry in (data.get("sshPublicKeys") or {}).values():
            expiry = entry.get("expirationTimeUsec")
            keys.append((_key_text(entry.get("key", "")), int(expiry) if expiry else None))
        return cls(email, primary.get("username") or None, tuple(keys))

    def expiry_of(self, public_line: str) -> tuple[bool, int | None]:
        """(present, expiry in µs or None for never) for gcpdl's key."""
        want = _key_text(public_line)
        for key, expiry in self.keys:
            if key == want:
                return True, expiry
        return False, None


def _key_text(line: str) -> str:
    """"type base64" without the comment: how two key lines are compared."""
    return " ".join(line.split()[:2])


@dataclass(frozen=True)
class MissingRole:
    role: str
    why: str
    fix: str  # the exact command


@dataclass(frozen=True)
class Login:
    """Who gcpdl logs in as on a VM, and why."""

    user: str
    oslogin: bool
    detail: str  # OsLoginSetting.describe()


def member(email: str) -> str:
    kind = "serviceAccount" if email.endswith(".gserviceaccount.com") else "user"
    return f"{kind}:{email}"


def login_role_fix(project: str, email: str) -> MissingRole:
    return MissingRole(
        ROLE_LOGIN,
        f"{email} may not log in to VMs with OS Login (needs {ROLE_LOGIN}, or roles/compute.osAdminLogin for sudo)",
        f"gcloud projects add-iam-policy-binding {project} --member={member(email)} --role={ROLE_LOGIN}",
    )


def sa_user_fix(project: str, email: str, service_account: str) -> MissingRole:
    # on the VM's service account only: a project-wide grant would let the caller act as every one
    return MissingRole(
        ROLE_SA_USER,
        f"{email} may not act as the VM's service account {service_account} (OS Login needs {ROLE_SA_USER} on it)",
        f"gcloud iam service-accounts add-iam-policy-binding {service_account} --project={project} "
        f"--member={member(email)} --role={ROLE_SA_USER}",
    )


def external_fix(project: str, email: str) -> str:
    return (
        f"An organisation administrator must grant {ROLE_EXTERNAL} on the organisation that owns {project} "
        f"(find it with: gcloud projects get-ancestors {project}): gcloud organizations add-iam-policy-binding "
        f"ORGANIZATION_ID --member={member(email)} --role={ROLE_EXTERNAL}"
    )


class OsLogin:
    """One command's view of OS Login (made by ``ClientFactory.oslogin()``): the project's
    setting, the caller's account and login profile are each read at most once."""

    def __init__(self, factory: Any, now: Callable[[], float] = time.time):
        self.factory = factory
        self.now = now
        self._lock = threading.RLock()
        self._project: dict[str, Any] | None = None
        self._email: str | None = None
        self._profile: LoginProfile | None = None

    # --- reads ---------------------------------------------------------------------------
    def project_info(self) -> dict[str, Any]:
        """Compute's project resource (commonInstanceMetadata, defaultServiceAccount)."""
        from gcpdl.ssh.target import _get

        with self._lock:
            if self._project is None:
                project = self.factory.project()
                self._project = _get(self.factory, f"/projects/{project}", f"project {project}")
            return self._project

    def remember_project(self, info: Mapping[str, Any]) -> None:
        """A projects.get the caller already made (doctor, up's pre-flight): no second read."""
        with self._lock:
            self._project = dict(info)

    def setting(self, instance_metadata: Mapping[str, str] | None = None) -> OsLoginSetting:
        instance_metadata = instance_metadata or {}
        if flag(instance_metadata.get(ENABLE_KEY)) is not None:  # decided on the VM: no project read
            return detect({}, instance_metadata)
        return detect(metadata_items(self.project_info().get("commonInstanceMetadata")), instance_metadata)

    def email(self) -> str:
        """The caller's account: the `account` setting, a service account's own email, or for
        user credentials the token's owner (tokeninfo), as gcloud knows it from its login."""
        with self._lock:
            if self._email is None:
                self._email = self.factory.settings.account or self._email_from_credentials()
            return self._email

    def _email_from_credentials(self) -> str:
        creds = self.factory.credentials()
        email = getattr(creds, "service_account_email", None)
        if email and "@" in email:
            return email
        token = self._token(creds)
        url = f"{self.factory.oauth2_endpoint}/tokeninfo"
        import requests

        try:  # POSTed as a form (as Google's own clients do), so the token is in no URL
            resp = requests.post(url, data={"access_token": token}, timeout=HTTP_TIMEOUT)
        except requests.RequestException as e:
            raise GcpdlError(f"Cannot reach {url} to learn your account: {type(e).__name__}.") from None
        email = resp.json().get("email") if resp.status_code == 200 else None
        if not email:
            raise CredentialsError(
                "Cannot tell which Google account the credentials belong to (needed for OS Login).",
                fix="Run: gcpdl config set account YOU@example.com",
            )
        return email

    @staticmethod
    def _token(creds: Any) -> str:
        if not creds.valid:
            from google.auth.transport.requests import Request

            try:
                creds.refresh(Request())
            except Exception as e:  # google.auth.exceptions.* : one clear line
                raise CredentialsError(f"Could not get an access token: {str(e).splitlines()[0][:160]}",
                                       fix="Run: gcloud auth application-default login") from None
        return creds.token

    def _user_path(self) -> str:
        return f"{self.factory.oslogin_endpoint}/v1/users/{quote(self.email(), safe='@')}"

    def profile(self, fresh: bool = False) -> LoginProfile:
        """users.getLoginProfile for this project."""
        with self._lock:
            if self._profile is None or fresh:
                try:
                    data = self._rest("GET", f"{self._user_path()}/loginProfile", "OS Login API",
                                      params={"projectId": self.factory.project()})
                except PermissionDenied as e:
                    raise self._refused("OS Login refused to read your login profile", e) from None
                self._profile = LoginProfile.from_api(self.email(), data)
            return self._profile

    def _refused(self, what: str, e: PermissionDenied) -> PermissionDenied:
        """A 403 from the OS Login API; an account from outside the organisation gets its own fix."""
        project, email = self.factory.project(), self.email()
        if "external" in e.message.lower():
            return PermissionDenied(f"{what}: {email} is outside the organisation of project {project}.",
                                    fix=external_fix(project, email))
        return PermissionDenied(f"{what} for {email}: {e.message}", fix=e.fix)

    # --- the one write -----------------------------------------------------------------------
    def ensure_key(self, public_line: str) -> LoginProfile:
        """gcpdl's key in the caller's profile with more than REFRESH_BEFORE left; imported (for
        KEY_TTL) only when it is missing or about to expire."""
        with self._lock:
            profile = self.profile()
            present, expiry = profile.expiry_of(public_line)
            fresh_enough = present and (expiry is None or expiry / 1e6 - self.now() > REFRESH_BEFORE)
            if not (fresh_enough and profile.username):
                profile = self._import(public_line)
            if not profile.username:
                raise GcpdlError(f"OS Login has no POSIX account for {profile.email} in project {self.factory.project()}.",
                                 fix=f"Check the account with: gcloud compute os-login describe-profile --project={self.factory.project()}")
            return profile

    def _import(self, public_line: str) -> LoginProfile:
        project = self.factory.project()
        body = {"key": public_line.strip(), "expirationTimeUsec": str(int((self.now() + KEY_TTL) * 1e6))}
        try:
            data = self._rest("POST", f"{self._user_path()}:importSshPublicKey", "OS Login API",
                              params={"projectId": project}, body=body)
        except PermissionDenied as e:
            raise self._refused("OS Login refused gcpdl's key", e) from None
        if data.get("loginProfile"):
            self._profile = LoginProfile.from_api(self.email(), data["loginProfile"])
            return self._profile
        return self.profile(fresh=True)

    # --- who logs in -------------------------------------------------------------------------
    def login(self, instance_metadata: Mapping[str, str] | None = None) -> Login:
        """The user to log in as on a VM with this metadata (an empty mapping: a VM gcpdl is
        about to create). With OS Login on, gcpdl's key is in the caller's profile on return."""
        setting = self.setting(instance_metadata)
        if not setting.enabled:
            return Login(self.factory.settings.ssh_user, False, setting.describe())
        from gcpdl.ssh.keys import ensure_keypair

        profile = self.ensure_key(ensure_keypair().public_line)
        return Login(profile.username or "", True, setting.describe())

    def username(self, instance_metadata: Mapping[str, str] | None = None) -> str | None:
        """Like login() but never writes: None where OS Login is on and no POSIX account exists."""
        setting = self.setting(instance_metadata)
        if not setting.enabled:
            return self.factory.settings.ssh_user
        return self.profile().username

    # --- may the caller log in? --------------------------------------------------------------
    def missing_roles(self, instance: Mapping[str, Any] | None = None) -> list[MissingRole]:
        """testIamPermissions on the VM (Compute) or, before one exists, on the project (Cloud
        Resource Manager), and actAs on the VM's service account (IAM)."""
        project = self.factory.project()
        email = self.email()
        if instance is not None:
            zone = (instance.get("zone") or "").rstrip("/").rsplit("/", 1)[-1]
            url = f"{self.factory.compute_base_url}/projects/{project}/zones/{zone}/instances/{instance.get('name')}/testIamPermissions"
            granted = self._granted(url, list(LOGIN_PERMISSIONS), "Compute Engine API")
            accounts = [a.get("email") for a in instance.get("serviceAccounts") or [] if a.get("email")]
        else:
            url = f"{self.factory.resourcemanager_endpoint}/v1/projects/{project}:testIamPermissions"
            granted = self._granted(url, [*LOGIN_PERMISSIONS, ACT_AS], "Cloud Resource Manager API")
            default = self.project_info().get("defaultServiceAccount")
            accounts = [] if ACT_AS in granted else [default] if default else []
        missing = [] if granted & set(LOGIN_PERMISSIONS) else [login_role_fix(project, email)]
        for account in accounts:
            url = f"{self.factory.iam_endpoint}/v1/projects/-/serviceAccounts/{quote(account, safe='@')}:testIamPermissions"
            if ACT_AS not in self._granted(url, [ACT_AS], "IAM API"):
                missing.append(sa_user_fix(project, email, account))
        return missing

    def require_roles_for_new_vm(self) -> None:
        """Before `up` creates a VM under OS Login: the roles logging in will need (granted on
        the project or above, as a new VM inherits nothing else), as one error, so no VM is
        paid for that the caller cannot reach. Best effort: where the check itself cannot be
        answered (an API disabled, say), the ready wait checks the VM again."""
        try:
            missing = self.missing_roles(None)
        except GcpdlError:
            return
        if missing:
            raise PermissionDenied(
                f"You could not log in to a new VM with OS Login: {'; '.join(m.why for m in missing)}. Nothing created.",
                fix="Run: " + " && ".join(m.fix for m in missing),
            )

    def _granted(self, url: str, permissions: list[str], api: str) -> set[str]:
        data = self._rest("POST", url, api, body={"permissions": permissions})
        return set(data.get("permissions") or [])

    # --- transport ---------------------------------------------------------------------------
    def _rest(self, method: str, url: str, api: str, params: dict[str, str] | None = None,
              body: Any = None) -> dict[str, Any]:
        import requests
        from google.auth.exceptions import GoogleAuthError

        try:
            resp = self.factory.session.request(method, url, params=params, json=body, timeout=HTTP_TIMEOUT)
        except requests.RequestException as e:
            root = url.split("/v1/")[0].split("/compute/v1")[0]
            raise GcpdlError(f"Cannot reach the {api} at {root}: {type(e).__name__}.") from None
        except GoogleAuthError as e:
            raise CredentialsError(f"Could not get an access token: {str(e).splitlines()[0][:160]}",
                                   fix="Run: gcloud auth application-default login") from None
        if resp.status_code < 400:
            return resp.json() if resp.content else {}
        try:
            err = resp.json().get("error") or {}
            message = err.get("message") or resp.text[:200]
        except ValueError:
            err, message = {}, resp.text[:200]
        text = str(err)
        if resp.status_code == 401:
            raise CredentialsError(f"The {api} rejected the credentials.", fix="Run: gcloud auth application-default login")
        if resp.status_code == 403 and ("SERVICE_DISABLED" in text or "accessNotConfigured" in text or "has not been used" in message):
            service = {"OS Login API": "oslogin", "IAM API": "iam", "Cloud Resource Manager API": "cloudresourcemanager"}.get(api, "compute")
            raise ApiDisabled(f"The {api} is not enabled in project {self.factory.project()}.",
                              fix=f"Run: gcloud services enable {service}.googleapis.com")
        if resp.status_code == 403:
            raise PermissionDenied(message)
        if resp.status_code == 404:
            raise NotFound(f"{api}: {message}")
        raise GcpdlError(f"The {api} answered HTTP {resp.status_code}: {message}")


# --- when a VM refuses the OS Login user -------------------------------------------------------
def access_problem(factory: Any, target: Any) -> GcpdlError | None:
    """The missing roles for ``target`` (an SshTarget with OS Login on) as one error, or None."""
    missing = factory.oslogin().missing_roles(dict(target.instance))
    if not missing:
        return None
    what = "; ".join(m.why for m in missing)
    return PermissionDenied(f"You cannot log in to VM {target.name} with OS Login: {what}.",
                            fix="Run: " + " && ".join(m.fix for m in missing))


def refusal(factory: Any, target: Any) -> GcpdlError:
    """Why a VM with OS Login refused gcpdl's key: a missing role if there is one."""
    problem = access_problem(factory, target)
    if problem is not None:
        return problem
    from gcpdl.ssh.session import KeyNotAuthorized

    return KeyNotAuthorized(
        f"VM {target.name} refused gcpdl's key for OS Login user {target.user}, though the key is in your OS Login profile.",
        fix=f"A VM that just booted may not be ready yet: retry in a minute (see your profile with: "
            f"gcloud compute os-login describe-profile --project={factory.project()}).",
    )
