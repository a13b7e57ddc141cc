"""OS Login end to end (issue 8, §1): gcpdl's laptop side and Google's real VM side, joined as on GCE.

The laptop side is the real `gcpdl ssh` (CliRunner) against the fake Compute server and the OS
Login API stand-in; the VM side is tests/fixtures/guestvm.py: Debian's real google_guest_agent,
OS Login NSS module, google_authorized_keys and sshd in private namespaces. They meet where they
meet on GCE: the VM's metadata server answers ``/computeMetadata/v1/oslogin/...`` from the OS Login
service's state (tests/fixtures/oslogin.py ``serve_metadata_source``), so the POSIX user and the
key the guest sees are the ones gcpdl's ``importSshPublicKey`` created. The fake Compute server's
instance is the guest (natIP 127.0.0.1, GCPDL_SSH_PORT its relay) and its getGuestAttributes
answers with what the real agent wrote, so the host key gcpdl pins is the one the agent published.
One guest per module; each test puts back what it changes. Skips when not root.
"""

from __future__ import annotations

import time

import pytest

from gcpdl.ssh.hostkeys import host_alias, parse_guest_attributes, read_known
from gcpdl.ssh.keys import ensure_keypair
from tests.fakes.oslogin_server import _default_username
from tests.fixtures.guestvm import GuestVm
from tests.fixtures.oslogin import metadata_oslogin, serve_metadata_source
from tests.helpers import run

ZONE = "us-central1-a"
SA_EMAIL = "gcpdl-tests@test-project.iam.gserviceaccount.com"  # the caller: the fake's service-account key
VM_SA = "123456789012-compute@developer.gserviceaccount.com"
# OS Login's name for the caller, a service account ("sa_" and its numeric id), as the stand-in
# makes it; an account keeps its name and uid (the guest's NSS cache remembers both)
SA_USER = _default_username(SA_EMAIL)
LABELS = {"gcpdl": "managed", "gcpdl-gpu": "t4", "gcpdl-gpu-count": "1", "gcpdl-spot": "false"}


@pytest.fixture(scope="module")
def vm(guestvm: GuestVm, fake_oslogin):
    """The module's guest, its metadata server taking OS Login answers from the API stand-in."""
    sock = guestvm.base / "oslogin.sock"
    server = serve_metadata_source(fake_oslogin, sock)
    guestvm.set_metadata({"oslogin": {"source": guestvm.guest_path(sock)}})
    try:
        yield guestvm
    finally:
        guestvm.set_metadata({"oslogin": {"source": None}})
        server.shutdown()
        server.server_close()


@pytest.fixture
def lab(gcp, oslogin, vm: GuestVm, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The guest as the fake Compute project's running VM `lab` (its name in the guest's metadata)."""
    monkeypatch.setenv("GCPDL_SSH_PORT", str(vm.ssh_port))
    monkeypatch.setenv("GCPDL_SSH_WAIT", "30")
    name = vm.metadata()["instance"]["name"]
    return gcp.add_instance(name, zone=ZONE, nat_ip="127.0.0.1", labels=LABELS, service_account=VM_SA,
                            guest_attributes=vm.attributes_by_namespace())


def published_host_keys(vm: GuestVm) -> set:
    return set(parse_guest_attributes(vm.guest_attributes("hostkeys/")))


def test_gcpdl_ssh_logs_in_as_the_os_login_user_the_real_guest_resolves(gcp, oslogin, vm, lab):
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    vm.set_os_login(True)
    try:
        r = run("ssh", lab["name"], "--", "id", "-un")
        assert r.exit_code == 0, r.output + vm.logs()

        # gcpdl imported its own key, with an expiry, for the caller's account
        key = ensure_keypair()
        [(email, body)] = oslogin.imports()
        assert (email, body["key"]) == (SA_EMAIL, key.public_line) and body["expirationTimeUsec"].isdigit()
        account = oslogin.profiles[SA_EMAIL]
        user = account["username"]
        # ... and logged in as the POSIX user of that profile, which is who the VM says it is
        assert r.stdout == f"{user}\n"

        # the real NSS module resolves that user through the metadata server inside the guest
        entry = vm.run("getent", "passwd", user, check=True).stdout.strip()
        assert entry == f"{user}:*:{account['uid']}:{account['uid']}::/home/{user}:/bin/bash"
        # the real google_authorized_keys hands sshd exactly gcpdl's key
        keys = vm.run("google_authorized_keys", user, check=True).stdout
        assert keys == f"{key.public_line}\n"

        # the host key was checked, not trusted on first use: gcpdl pinned under the instance id
        # exactly what the real agent published as guest attributes
        assert set(read_known(host_alias(lab["id"]))) == published_host_keys(vm)

        # sudo is the adminLogin policy: the real pam_oslogin_admin grants it at login to a
        # caller with roles/compute.osAdminLogin (the stand-in grants every role by default) ...
        sudoers = f"/var/google-sudoers.d/{user}"
        assert vm.read(sudoers) == f"{user} ALL=(ALL) NOPASSWD: ALL\n"

        # ... and takes it back at the next login of one with roles/compute.osLogin only; the
        # same flow again imports nothing: the key is in the profile and fresh
        oslogin.denied.add("compute.instances.osAdminLogin")
        again = run("ssh", lab["name"], "--", "id", "-un")
        assert (again.exit_code, again.stdout) == (0, f"{user}\n"), again.output
        assert vm.read(sudoers) is None
        assert len(oslogin.imports()) == 1
    finally:
        vm.set_os_login(False)


def test_an_expired_key_the_guest_ignores_is_imported_again(gcp, oslogin, vm, lab):
    """The real google_authorized_keys drops keys past expirationTimeUsec (by the VM's clock);
    gcpdl, finding its key in the profile but expired, imports it again rather than trusting it."""
    key = ensure_keypair()
    oslogin.seed(SA_EMAIL, SA_USER, [(key.public_line, int((time.time() - 60) * 1e6))])
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    vm.set_os_login(True)
    try:
        assert vm.run("google_authorized_keys", SA_USER, check=True).stdout == ""
        r = run("ssh", lab["name"], "--", "id", "-un")
        assert (r.exit_code, r.stdout) == (0, f"{SA_USER}\n"), r.output
        [(_, body)] = oslogin.imports()
        assert int(body["expirationTimeUsec"]) > time.time() * 1e6
        assert vm.run("google_authorized_keys", SA_USER, check=True).stdout == f"{key.public_line}\n"
    finally:
        vm.set_os_login(False)


def test_without_the_service_account_role_the_real_guest_refuses_and_gcpdl_names_the_grant(gcp, oslogin, vm, lab):
    """On GCE the metadata server's authorize answer also needs actAs on the VM's service
    account: the real google_authorized_keys then prints no key and gcpdl says which role is missing."""
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    vm.set_os_login(True)
    try:
        oslogin.denied.add("iam.serviceAccounts.actAs")
        r = run("ssh", lab["name"], "--", "id", "-un")
        user = oslogin.profiles[SA_EMAIL]["username"]
        assert vm.run("google_authorized_keys", user).stdout == ""
        assert r.exit_code == 1, r.output
        assert r.stderr.startswith(f"Error: You cannot log in to VM {lab['name']} with OS Login: "), r.stderr
        assert f"may not act as the VM's service account {VM_SA}" in r.stderr
        assert r.stderr.count("\n") == 1
    finally:
        vm.set_os_login(False)


def test_with_os_login_off_the_same_flow_uses_ssh_keys_and_imports_nothing(gcp, oslogin, vm, lab):
    key = ensure_keypair()  # as `up` put it in the VM's ssh-keys metadata
    vm.set_attributes(**{"ssh-keys": f"{vm.key.metadata_entry()}\n{key.metadata_entry()}"})
    try:
        vm.wait("the agent to install gcpdl's key",
                lambda: key.public_line in (vm.read("/home/gcpdl/.ssh/authorized_keys") or ""))
        r = run("ssh", lab["name"], "--", "id", "-un")
        assert (r.exit_code, r.stdout) == (0, "gcpdl\n"), r.output
        assert oslogin.requests == []  # no identity API asked, no key imported
        assert vm.run("google_authorized_keys", "gcpdl").stdout == ""  # the guest's OS Login side is off
        assert set(read_known(host_alias(lab["id"]))) == published_host_keys(vm)
    finally:
        vm.set_attributes(**{"ssh-keys": vm.key.metadata_entry()})


def test_a_host_key_the_agent_did_not_publish_is_refused(gcp, oslogin, vm, lab):
    with gcp._lock:  # the Compute API says the VM has another key than the one the guest serves
        gcp.guest_attrs[(ZONE, lab["name"])]["hostkeys"] = {
            "ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAIBeF5Pmx0GQ1bG7u6u6bqQ7rE1Zt5kQbq0n2xwYz9S3k"}
    r = run("ssh", lab["name"], "--", "id", "-un")
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert "host key" in r.stderr.lower()


def test_a_posix_name_the_guest_accepts_is_one_gcpdl_accepts(gcp, oslogin, vm, lab, monkeypatch):
    """OS Login names a user after the email ("2019123@student.example.edu" logs in as
    2019123_student_example_edu), and the guest's NSS module accepts any name matching
    ^[a-zA-Z0-9._][a-zA-Z0-9._-]{0,31}$ (guest-oslogin's kUserNameRegex). gcpdl must not refuse
    such a user where the VM takes it: `up` renders the startup script for it, and that script,
    run by the real script runner, serves Jupyter as that user."""
    email = "2019123@student.example.edu"  # a student number, as many universities give
    user = "2019123_student_example_edu"
    monkeypatch.setenv("GCPDL_ACCOUNT", email)
    oslogin.seed(email, user)
    oslogin.profiles[email]["uid"] = "1000042"  # another account than the caller of other tests
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")
    monkeypatch.setenv("GCPDL_ZONE", ZONE)
    gcp.set_project_metadata("enable-oslogin", "TRUE")
    vm.set_os_login(True)
    try:
        r = run("ssh", lab["name"], "--", "id", "-un")
        assert (r.exit_code, r.stdout) == (0, f"{user}\n"), r.output
        assert [e for e, _ in oslogin.imports()] == [email]

        up = run("up", "lab2", "--cpu-only", "--yes")
        assert up.exit_code == 0, up.output
        script = {i["key"]: i["value"] for i in gcp.instance(ZONE, "lab2")["metadata"]["items"]}["startup-script"]
        vm.set_attributes(**{"startup-script": script})
        out = vm.run("google_metadata_script_runner", "startup", timeout=240.0, check=True).stdout
        assert "startup-script exit status 0" in out, out + vm.logs()
        assert vm.guest_attribute("gcpdl", "stage") == "ready"
        pid = vm.read("/run/guestvm-units/gcpdl-jupyter.service.pid").strip()
        assert vm.run("ps", "-o", "user=", "-p", pid, check=True).stdout.strip() == user
        # the setup log `up` points at is readable by this OS Login user, who has no sudo
        from gcpdl.ssh.ready import startup_log_command

        argv = startup_log_command(lab["name"]).split()[1:]
        assert run(*argv[:3], "sudo", "-n", "true").exit_code != 0  # osLogin only: no sudo
        log = run(*argv)
        assert log.exit_code == 0 and "gcpdl: ready" in log.stdout, log.output
    finally:
        vm.run("systemctl", "stop", "gcpdl-jupyter.service", "gcpdl-autostop.service")
        vm.set_attributes(**{"startup-script": None})
        vm.set_os_login(False)


# --- the adapter itself (no root needed) --------------------------------------------------------


def test_metadata_profile_is_the_api_profile_as_the_guest_reads_it(fake_oslogin):
    fake_oslogin.reset()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeF5Pmx0GQ1bG7u6u6bqQ7rE1Zt5kQbq0n2xwYz9S3k gcpdl"
    fake_oslogin.seed("a@example.com", "a_example_com", [(key, 1_900_000_000_000_000)])
    fake_oslogin.seed("b@example.com", "b_example_com")
    fake_oslogin.refuse_login.add("b_example_com")
    out = metadata_oslogin(fake_oslogin)
    a = out["profiles"][0]
    assert a["name"] == "a@example.com"  # the email: google_authorized_keys asks authorize?email= with it
    assert a["posixAccounts"][0]["username"] == "a_example_com" and a["posixAccounts"][0]["primary"]
    [entry] = a["sshPublicKeys"].values()
    assert (entry["key"], entry["expirationTimeUsec"]) == (key, "1900000000000000")
    assert out["authorize"] == {"a@example.com": {"login": True, "adminLogin": True},
                                "b@example.com": {"login": False, "adminLogin": False}}
    fake_oslogin.denied.add("compute.instances.osAdminLogin")
    assert metadata_oslogin(fake_oslogin)["authorize"]["a@example.com"] == {"login": True, "adminLogin": False}
    fake_oslogin.reset()


@pytest.mark.parametrize("user", ["2019123_student_example_edu", SA_USER, "Jo.Doe_example_com", "x" * 32])
def test_startup_script_takes_every_name_os_login_gives(user):
    from gcpdl.startup import StartupOptions, render_startup_script

    assert f"GCPDL_USER={user}\n" in render_startup_script(StartupOptions(user=user))


@pytest.mark.parametrize("user", ["gcpdl\n", "12345", "..", "-x", "a b", "a$b", "x" * 33, ""])
def test_startup_script_refuses_a_name_unsafe_in_a_script_or_unit(user):
    from gcpdl.errors import InvalidInput
    from gcpdl.startup import StartupOptions, render_startup_script

    with pytest.raises(InvalidInput, match="is not a valid Linux user name"):
        render_startup_script(StartupOptions(user=user))
