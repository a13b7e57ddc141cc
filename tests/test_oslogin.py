"""OS Login (issue 8, item 1): detected from project and instance metadata; where it is on, gcpdl's
key goes into the caller's OS Login profile (never ssh-keys) and gcpdl logs in as the profile's
POSIX user; where it is off, nothing is imported. Real HTTP to the fake Compute server and the
OS Login stand-in, real SSH to an sshd that authorizes keys the way an OS Login VM does."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.oslogin import KEY_TTL, REFRESH_BEFORE, OsLogin, detect, flag
from gcpdl.ssh.sshconfig import managed_path

from tests.helpers import run

ZONE = "us-central1-a"
SA_EMAIL = "gcpdl-tests@test-project.iam.gserviceaccount.com"  # the fake's service-account key
VM_SA = "123456789012-compute@developer.gserviceaccount.com"
LABELS = {"gcpdl": "managed", "gcpdl-gpu": "t4", "gcpdl-gpu-count": "1", "gcpdl-spot": "false"}


def metadata_of(inst: dict) -> dict[str, str]:
    return {i["key"]: i["value"] for i in inst["metadata"].get("items", [])}


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


# --- detection ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "project, instance, on, source",
    [
        ({}, {}, False, "default"),
        ({"enable-oslogin": "TRUE"}, {}, True, "project"),
        ({"enable-oslogin": "true"}, {}, True, "project"),
        ({"enable-oslogin": "TRUE"}, {"enable-oslogin": "FALSE"}, False, "instance"),  # instance overrides
        ({"enable-oslogin": "false"}, {"enable-oslogin": "True"}, True, "instance"),
        ({"enable-oslogin": "TRUE"}, {"enable-oslogin": "maybe"}, True, "project"),  # not a boolean: unset
    ],
)
def test_detect_instance_overrides_project(project, instance, on, source):
    found = detect(project, instance)
    assert (found.enabled, found.source) == (on, source)
    assert flag(None) is None


def test_project_setting_is_read_from_compute_once(gcp, oslogin):
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve

    gcp.set_project_metadata("enable-oslogin", "TRUE")
    api = OsLogin(ClientFactory(resolve()))
    assert api.setting({}).describe() == "on (project metadata enable-oslogin=TRUE)"
    assert api.setting({"enable-oslogin": "false"}).describe() == "off (instance metadata enable-oslogin=false)"
    api.setting({})
    assert len(gcp.calls("compute.projects.get")) == 1  # one read per command


# --- doctor -------------------------------------------------------------------------------------
@pytest.fixture
def denv(oslogin, monkeypatch):
    monkeypatch.setenv("GCPDL_ZONE", ZONE)
    return oslogin


def test_doctor_says_off_and_touches_no_identity_api(gcp, denv):
    r = run("doctor", "--cpu-only", "--json")
    assert r.exit_code == 0, r.output
    c = checks(r)["os login"]
    assert c["ok"] and c["detail"].startswith("off (enable-oslogin is not set")
    assert denv.requests == []


def test_doctor_on_reports_account_user_and_roles(gcp, denv):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    denv.seed(SA_EMAIL, "sa_4242")
    r = run("doctor", "--cpu-only", "--json")
    assert r.exit_code == 0, r.output
    c = checks(r)
    assert c["os login"]["detail"] == f"on (project metadata enable-oslogin=TRUE): {SA_EMAIL} logs in as sa_4242"
    assert c["role compute.osLogin"]["ok"] and c["role iam.serviceAccountUser"]["ok"]
    assert denv.imports() == []  # doctor only reads


def test_doctor_explains_each_missing_role_with_its_grant_command(gcp, denv):
    gcp.set_project_metadata("enable-oslogin", "true")
    denv.denied |= {"compute.instances.osLogin", "compute.instances.osAdminLogin", "iam.serviceAccounts.actAs"}
    r = run("doctor", "--cpu-only", "--json")
    assert r.exit_code == 1
    c = checks(r)
    assert c["role compute.osLogin"]["fix"] == (
        f"Run: gcloud projects add-iam-policy-binding test-project --member=serviceAccount:{SA_EMAIL} --role=roles/compute.osLogin"
    )
    assert c["role iam.serviceAccountUser"]["fix"] == (
        f"Run: gcloud iam service-accounts add-iam-policy-binding {VM_SA} --project=test-project "
        f"--member=serviceAccount:{SA_EMAIL} --role=roles/iam.serviceAccountUser"
    )
    human = run("doctor", "--cpu-only")
    assert "FAIL  role compute.osLogin:" in human.stdout
    # project-level actAs was refused, so the VM's (default) service account itself was asked
    assert any(":testIamPermissions" in p and "/serviceAccounts/" in p for _, p, _, _ in denv.requests)


def test_doctor_accepts_actas_granted_on_the_service_account_only(gcp, denv):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    denv.project_denied.add("iam.serviceAccounts.actAs")  # not project-wide, but on the VMs' account
    r = run("doctor", "--cpu-only", "--json")
    assert r.exit_code == 0, r.output
    assert checks(r)["role iam.serviceAccountUser"]["ok"]
    assert [p for _, p, _, _ in denv.requests if "/serviceAccounts/" in p] == [
        f"/v1/projects/-/serviceAccounts/{VM_SA}:testIamPermissions"]


def test_doctor_tells_an_external_account_which_role_it_needs(gcp, denv):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    denv.fail_profile(403)
    r = run("doctor", "--cpu-only", "--json")
    assert r.exit_code == 1
    c = checks(r)["os login"]
    assert c["detail"] == (f"on (project metadata enable-oslogin=TRUE); OS Login refused to read your login profile: "
                           f"{SA_EMAIL} is outside the organisation of project test-project.")
    assert c["fix"].endswith(f"--member=serviceAccount:{SA_EMAIL} --role=roles/compute.osLoginExternalUser")


# --- up: key import only when on ---------------------------------------------------------------
@pytest.fixture
def uenv(oslogin, monkeypatch):
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")
    monkeypatch.setenv("GCPDL_ZONE", ZONE)
    return oslogin


def test_up_without_oslogin_uses_ssh_keys_and_imports_nothing(gcp, uenv):
    r = run("up", "box", "--cpu-only", "--yes")
    assert r.exit_code == 0, r.output
    meta = metadata_of(gcp.instance(ZONE, "box"))
    assert meta["ssh-keys"].startswith("gcpdl:ssh-ed25519 ")
    assert uenv.requests == []  # not even a profile read


def test_up_with_oslogin_imports_the_key_and_leaves_ssh_keys_out(gcp, uenv):
    from gcpdl.ssh.keys import ensure_keypair

    gcp.set_project_metadata("enable-oslogin", "TRUE")
    uenv.usernames[SA_EMAIL] = "sa_777"
    before = time.time()
    r = run("up", "box", "--cpu-only", "--yes")
    assert r.exit_code == 0, r.output
    meta = metadata_of(gcp.instance(ZONE, "box"))
    assert "ssh-keys" not in meta  # the guest agent would remove that user anyway
    assert "enable-oslogin" not in meta  # the project's setting is never flipped, nor overridden
    (email, body), = uenv.imports()
    assert email == SA_EMAIL and body["key"] == ensure_keypair().public_line
    expires = int(body["expirationTimeUsec"]) / 1e6
    assert before + KEY_TTL - 60 <= expires <= time.time() + KEY_TTL
    # Jupyter runs as the OS Login POSIX user
    assert "sa_777" in meta["startup-script"]
    assert gcp.project_metadata == {"enable-oslogin": "TRUE"}


def test_up_without_the_login_role_stops_before_creating_anything(gcp, uenv):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    uenv.denied |= {"compute.instances.osLogin", "compute.instances.osAdminLogin"}
    r = run("up", "box", "--cpu-only", "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == (
        f"Error: You could not log in to a new VM with OS Login: {SA_EMAIL} may not log in to VMs with OS Login "
        "(needs roles/compute.osLogin, or roles/compute.osAdminLogin for sudo). Nothing created. "
        f"Run: gcloud projects add-iam-policy-binding test-project --member=serviceAccount:{SA_EMAIL} --role=roles/compute.osLogin"
    )
    assert gcp.instances() == [] and gcp.firewalls() == [] and uenv.imports() == []


def test_key_is_reimported_only_when_missing_or_close_to_expiry(gcp, oslogin):
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve
    from gcpdl.ssh.keys import ensure_keypair

    line = ensure_keypair().public_line
    clock = [1_800_000_000.0]
    api = OsLogin(ClientFactory(resolve()), now=lambda: clock[0])
    api.ensure_key(line)
    assert len(oslogin.imports()) == 1
    OsLogin(ClientFactory(resolve()), now=lambda: clock[0]).ensure_key(line)  # a later command
    assert len(oslogin.imports()) == 1  # same key, a day left: only the profile was read
    clock[0] += KEY_TTL - REFRESH_BEFORE + 60  # under an hour left
    OsLogin(ClientFactory(resolve()), now=lambda: clock[0]).ensure_key(line)
    assert len(oslogin.imports()) == 2
    assert int(oslogin.imports()[-1][1]["expirationTimeUsec"]) == int((clock[0] + KEY_TTL) * 1e6)


def test_account_of_user_credentials_comes_from_tokeninfo(oslogin, monkeypatch):
    import google.oauth2.credentials

    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve

    oslogin.token_emails["ya29.user-token"] = "learner@example.com"
    creds = google.oauth2.credentials.Credentials(token="ya29.user-token")  # no expiry: valid as is
    assert OsLogin(ClientFactory(resolve(), credentials=creds)).email() == "learner@example.com"
    monkeypatch.setenv("GCPDL_ACCOUNT", "set@example.com")  # the `account` setting wins
    assert OsLogin(ClientFactory(resolve(), credentials=creds)).email() == "set@example.com"
    monkeypatch.delenv("GCPDL_ACCOUNT")
    oslogin.token_emails.clear()
    with pytest.raises(Exception, match="Cannot tell which Google account"):
        OsLogin(ClientFactory(resolve(), credentials=creds)).email()


# --- ssh as the POSIX user, against an sshd that only knows imported keys ------------------------
@pytest.fixture
def os_vm(gcp, oslogin, oslogin_sshd, monkeypatch):
    """A running VM whose sshd is ``oslogin_sshd``; OS Login on for the project; the caller's
    POSIX user is the sshd's user. GCPDL_SSH_USER stays at its default ("gcpdl", which does not
    exist here): logging in works only as the OS Login user, with an imported key."""
    monkeypatch.setenv("GCPDL_SSH_PORT", str(oslogin_sshd.port))
    monkeypatch.setenv("GCPDL_SSH_WAIT", "10")
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    oslogin.usernames[SA_EMAIL] = oslogin_sshd.user
    gcp.add_instance("box", zone=ZONE, status="RUNNING", nat_ip="127.0.0.1", labels=LABELS, service_account=VM_SA,
                     guest_attributes={"hostkeys": dict(oslogin_sshd.host_public_keys)})
    return oslogin


def test_ssh_logs_in_as_the_oslogin_posix_user(gcp, os_vm, oslogin_sshd):
    r = run("ssh", "box", "--", "whoami")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"{oslogin_sshd.user}\n"
    assert [e for e, _ in os_vm.imports()] == [SA_EMAIL]
    # the ssh config block says the same user, so plain `ssh box` works too
    assert f"    User {oslogin_sshd.user}\n" in managed_path().read_text()
    again = run("ssh", "box", "--", "true")
    assert again.exit_code == 0, again.output
    assert len(os_vm.imports()) == 1  # the key is there and fresh: no second import


def test_instance_metadata_off_overrides_the_project(gcp, oslogin, sshd, monkeypatch):
    """OS Login on for the project, off on this VM: the ssh-keys path (settings.ssh_user, key
    from the VM's metadata), and nothing imported."""
    from gcpdl.ssh.keys import ensure_keypair

    key = ensure_keypair()
    sshd.authorize(key.public_line)
    monkeypatch.setenv("GCPDL_SSH_PORT", str(sshd.port))
    monkeypatch.setenv("GCPDL_SSH_USER", sshd.user)
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    gcp.add_instance("box", zone=ZONE, nat_ip="127.0.0.1", labels=LABELS,
                     metadata={"enable-guest-attributes": "TRUE", "enable-oslogin": "FALSE"},
                     guest_attributes={"hostkeys": dict(sshd.host_public_keys)})
    r = run("ssh", "box", "--", "whoami")
    assert r.exit_code == 0, r.output
    assert oslogin.requests == []


def test_instance_metadata_on_overrides_the_project(gcp, os_vm, oslogin_sshd):
    gcp.set_project_metadata("enable-oslogin", None)
    inst = gcp.instances_by_key[(ZONE, "box")]
    inst["metadata"]["items"].append({"key": "enable-oslogin", "value": "TRUE"})
    r = run("ssh", "box", "--", "whoami")
    assert (r.exit_code, r.stdout) == (0, f"{oslogin_sshd.user}\n"), r.output
    assert len(os_vm.imports()) == 1


def test_refused_login_names_the_missing_role(gcp, os_vm, oslogin_sshd):
    os_vm.refuse_login.add(oslogin_sshd.user)  # the VM side refuses, as it does without the role
    gcp.deny("compute.instances.osLogin")
    gcp.deny("compute.instances.osAdminLogin")
    r = run("ssh", "box", "--", "true")
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: You cannot log in to VM box with OS Login: {SA_EMAIL} may not log in to VMs with OS Login "
        "(needs roles/compute.osLogin, or roles/compute.osAdminLogin for sudo). "
        f"Run: gcloud projects add-iam-policy-binding test-project --member=serviceAccount:{SA_EMAIL} --role=roles/compute.osLogin\n"
    )


def test_refused_login_names_a_missing_service_account_user_role(gcp, os_vm, oslogin_sshd):
    os_vm.refuse_login.add(oslogin_sshd.user)
    os_vm.denied.add("iam.serviceAccounts.actAs")
    r = run("ssh", "box", "--", "true")
    assert r.exit_code == 1
    assert f"may not act as the VM's service account {VM_SA}" in r.stderr
    assert f"gcloud iam service-accounts add-iam-policy-binding {VM_SA} --project=test-project" in r.stderr


def test_external_account_gets_the_external_user_fix(gcp, os_vm):
    os_vm.fail_import(403)
    r = run("ssh", "box", "--", "true")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: OS Login refused gcpdl's key: {SA_EMAIL} is outside the organisation of project test-project.")
    assert "roles/compute.osLoginExternalUser" in r.stderr and r.stderr.count("\n") == 1


def test_up_ready_wait_and_jupyter_work_for_the_posix_user(gcp, os_vm, oslogin_sshd, monkeypatch):
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")
    gcp.set_guest_attributes(ZONE, "box", "gcpdl", {"stage": "ready"})
    result = CliRunner().invoke(cli, ["up", "box", "--yes", "--zone", ZONE])
    assert result.exit_code == 0, result.output
    assert "gcpdl jupyter box" in result.output
    assert f"    User {oslogin_sshd.user}\n" in managed_path().read_text()


def test_status_writes_the_posix_user_and_plain_ssh_works(gcp, os_vm, oslogin_sshd, isolated_env):
    os_vm.seed(SA_EMAIL, oslogin_sshd.user)
    from gcpdl.ssh.keys import ensure_keypair

    os_vm.seed(SA_EMAIL, oslogin_sshd.user, [(ensure_keypair().public_line, None)])
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert os_vm.imports() == []  # status only reads the profile
    r = subprocess.run(["ssh", "-F", str(isolated_env / ".ssh" / "config"), "-o", "BatchMode=yes", "box", "whoami"],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, f"{oslogin_sshd.user}\n"), r.stderr


# --- dry-run --------------------------------------------------------------------------------------
def _dry(*args: str):
    return CliRunner().invoke(cli, ["up", "box", "--cpu-only", *args, "--dry-run"])


def test_dry_run_without_credentials_says_it_could_not_check(monkeypatch):
    monkeypatch.setenv("GCPDL_PROJECT", "demo-project")
    monkeypatch.setenv("GCPDL_ZONE", ZONE)
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")
    r = _dry("--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["oslogin"] == {
        "checked": False, "enabled": None, "user": None,
        "detail": "not checked (no Google credentials); the plan assumes it is off",
    }
    human = _dry()
    assert ("  os login  not checked (no Google credentials); the plan assumes it is off: "
            "gcpdl's key goes in the VM's ssh-keys metadata") in human.stdout.splitlines()


def test_dry_run_with_credentials_reports_oslogin_and_imports_nothing(gcp, uenv):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    uenv.seed(SA_EMAIL, "sa_777")
    r = _dry("--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["oslogin"] == {"checked": True, "enabled": True, "user": "sa_777",
                               "detail": "on (project metadata enable-oslogin=TRUE)"}
    inst = plan["requests"][-1]["body"]
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert "ssh-keys" not in meta and "sa_777" in meta["startup-script"]
    assert uenv.imports() == [] and gcp.calls("compute.instances.insert") == []
    human = _dry()
    assert "  os login  on (project metadata enable-oslogin=TRUE): gcpdl's key goes into your OS Login profile" in human.stdout


def test_dry_run_with_credentials_and_oslogin_off(gcp, uenv):
    plan = json.loads(_dry("--json").stdout)
    assert plan["oslogin"]["checked"] is True and plan["oslogin"]["enabled"] is False
    assert uenv.requests == []


# --- endpoints ------------------------------------------------------------------------------------
def test_endpoints_come_from_env_config_or_defaults(monkeypatch, isolated_env):
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve, write_config_value

    f = ClientFactory(resolve())
    assert (f.oslogin_endpoint, f.resourcemanager_endpoint, f.iam_endpoint, f.oauth2_endpoint) == (
        "https://oslogin.googleapis.com", "https://cloudresourcemanager.googleapis.com",
        "https://iam.googleapis.com", "https://oauth2.googleapis.com")
    write_config_value("oslogin_endpoint", "https://oslogin-psc.p.googleapis.com/")
    assert ClientFactory(resolve()).oslogin_endpoint == "https://oslogin-psc.p.googleapis.com"
    monkeypatch.setenv("GCPDL_OSLOGIN_ENDPOINT", "127.0.0.1:9")  # env beats the config file
    monkeypatch.setenv("GCPDL_IAM_ENDPOINT", "http://127.0.0.1:8")
    f = ClientFactory(resolve())
    assert (f.oslogin_endpoint, f.iam_endpoint) == ("http://127.0.0.1:9", "http://127.0.0.1:8")


def test_an_unreachable_oslogin_endpoint_is_one_clear_error(gcp, os_vm, monkeypatch):
    from tests.fixtures.ports import free_port

    monkeypatch.setenv("GCPDL_OSLOGIN_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    r = run("ssh", "box", "--", "true")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: Cannot reach the OS Login API at http://127.0.0.1:")
    assert os_vm.requests == []  # it went where the setting said, not to the default


def test_dry_run_before_the_first_import_names_no_user(gcp, uenv):
    gcp.set_project_metadata("enable-oslogin", "TRUE")  # the account has no POSIX user yet
    plan = json.loads(_dry("--json").stdout)
    assert plan["oslogin"]["enabled"] is True and plan["oslogin"]["user"] is None
    assert "login as the POSIX user OS Login creates at the first key import" in _dry().stdout
    assert uenv.imports() == []


def test_up_refused_at_the_price_prompt_imports_nothing(gcp, uenv, monkeypatch):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    monkeypatch.setenv("GCPDL_CONFIRM_ABOVE", "0")
    r = CliRunner().invoke(cli, ["up", "box", "--cpu-only", "--no-wait"], input="n\n")
    assert r.exit_code == 0 and r.stderr.splitlines()[-1] == "Nothing created."  # issue 10: "n" is an answer
    assert uenv.imports() == [] and gcp.instances() == []


def test_status_without_a_posix_account_writes_no_wrong_user(gcp, os_vm):
    os_vm.usernames.clear()  # the caller never logged in with OS Login: no account yet
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert os_vm.imports() == []
    assert not managed_path().exists() or "Host box" not in managed_path().read_text()


def test_jupyter_tunnel_as_the_posix_user(gcp, os_vm, oslogin_sshd, jupyter_server):
    """`gcpdl jupyter` (a real process) finds the server as the OS Login user and tunnels to it."""
    import os
    import signal
    import sys

    import requests

    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "jupyter", "box", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        url = proc.stdout.readline().strip()
        assert url.endswith(f"/?token={jupyter_server.token}"), url
        r = requests.get(url.split("?")[0] + "api/status", headers={"Authorization": f"token {jupyter_server.token}"}, timeout=10)
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(os_vm.imports()) == 1


def test_sync_on_a_vm_as_the_posix_user(gcp, os_vm, oslogin_sshd, gcs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    gcs.create_bucket("osdata", public=True)
    names = gcs.generate("osdata", "d/", count=5, size=1000, seed=3)
    dest = tmp_path / "vm-disk" / "d"
    r = CliRunner().invoke(cli, ["sync", "gs://osdata/d", str(dest), "--on", "box", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 5
    assert sorted(p.name for p in dest.iterdir() if p.name != ".gcpdl") == sorted(n[len("d/"):] for n in names)
    assert len(os_vm.imports()) == 1


def test_dry_run_with_unusable_credentials_still_plans(monkeypatch, tmp_path):
    bad = tmp_path / "adc.json"
    bad.write_text('{"type": "service_account"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
    monkeypatch.setenv("GCPDL_PROJECT", "demo-project")
    monkeypatch.setenv("GCPDL_ZONE", ZONE)
    r = _dry("--json")
    assert r.exit_code == 0, r.output
    found = json.loads(r.stdout)["oslogin"]
    assert found["checked"] is False and found["detail"].startswith("could not check: The credentials file ")
