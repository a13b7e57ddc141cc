"""gcpdl's VM contract against Google's real guest software (issue 8).

Debian's google-guest-agent and google-compute-engine-oslogin run as root in private namespaces
(tests/fixtures/guestvm.py) against the metadata stand-in: no one on this project wrote the
code on the other side, so these tests check what gcpdl's own stand-ins only assume. One guest
is booted per module; tests that change its metadata put it back.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gcpdl.deadline import Deadline
from gcpdl.errors import HostKeyMismatch
from gcpdl.ssh.hostkeys import HostKey, host_alias, parse_guest_attributes, read_known
from gcpdl.ssh.session import KeyNotAuthorized, connect
from gcpdl.startup import StartupOptions, render_startup_script
from tests.fixtures.guestvm import GuestVm, boot_guest, host_snapshot

AGENT_GROUPS = {"adm", "video", "google-sudoers"}  # of the agent's default adm,dip,docker,lxd,plugdev,video
JUPYTER_WAIT = 120  # the script's own bound for Jupyter to answer (it starts in seconds)
SCRIPT_TIMEOUT = 240.0  # bound for one run of the startup scripts


def groups_of(vm: GuestVm, user: str) -> set[str]:
    return set(vm.run("id", "-nG", user, check=True).stdout.split())


def run_startup_scripts(vm: GuestVm) -> subprocess.CompletedProcess:
    """What google-startup-scripts.service runs at boot."""
    return vm.run("google_metadata_script_runner", "startup", timeout=SCRIPT_TIMEOUT, check=True)


def gcpdl_writes_since(vm: GuestVm, t0: float) -> list[dict]:
    return [w for w in vm.writes() if w["namespace"] == "gcpdl" and w["at"] >= t0]


def agent_pid(vm: GuestVm) -> str:
    """The running google_guest_agent's pid inside the guest."""
    return vm.run("pidof", "google_guest_agent", check=True).stdout.split()[0]


def login(vm: GuestVm, user: str = "gcpdl", seconds: float = 30.0):
    return connect(vm.target(user), Deadline(seconds, what="SSH"), key_path=vm.key.private_path)


# --- a) the ssh-keys path ---------------------------------------------------------------------


def test_agent_creates_the_ssh_keys_user_with_gcpdls_key(guestvm: GuestVm):
    keys = guestvm.read("/home/gcpdl/.ssh/authorized_keys")
    assert keys == f"# Added by Google\n{guestvm.key.public_line}\n"
    # the agent, not anyone else, made the account, with its groups and passwordless sudo
    assert "Creating user gcpdl." in guestvm.log("agent.log")
    callers = [line.split("\t") for line in guestvm.log("useradd.log").splitlines()]
    assert [(c[2], c[3], c[4]) for c in callers if c[4].endswith(" gcpdl")] == [
        ("google_guest_ag", "0", "-m -s /bin/bash -p * gcpdl")
    ]
    assert AGENT_GROUPS <= groups_of(guestvm, "gcpdl")
    assert "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL" in guestvm.read("/etc/sudoers.d/google_sudoers")


def test_agent_publishes_the_host_keys_gcpdl_pins(guestvm: GuestVm):
    published = set(parse_guest_attributes(guestvm.guest_attributes("hostkeys/")))
    on_disk = set()
    for kind in ("ecdsa", "ed25519", "rsa"):
        line = guestvm.read(f"/etc/ssh/ssh_host_{kind}_key.pub")
        assert line, f"the guest has no {kind} host key"
        on_disk.add(HostKey(*line.split()[:2]))
    assert published == on_disk
    assert {k.type for k in published} == {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"}
    # first boot (a new instance id): the agent replaced the image's keys with its own
    image_key = Path("/etc/ssh/ssh_host_ed25519_key.pub")
    if image_key.exists():
        assert HostKey(*image_key.read_text().split()[:2]) not in published


def test_agent_writes_four_guest_attributes_at_boot(guestvm: GuestVm):
    """Google's budget is about 10 writes a minute per VM: the agent spends 4 of them at boot."""
    writes = sorted((w["namespace"], w["key"]) for w in guestvm.boot_writes)
    assert writes == [
        ("guest-agent", "sshable"),
        ("hostkeys", "ecdsa-sha2-nistp256"),
        ("hostkeys", "ssh-ed25519"),
        ("hostkeys", "ssh-rsa"),
    ]


def test_gcpdl_logs_in_with_the_host_key_checked_against_guest_attributes(guestvm: GuestVm):
    target = guestvm.target()
    with login(guestvm) as session:
        result = session.run("id -un; echo $HOME")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["gcpdl", "/home/gcpdl"]
    # gcpdl pinned exactly the published keys under the instance id
    assert set(read_known(host_alias(target.instance_id))) == set(target.guest_keys)


def test_gcpdl_refuses_a_host_key_the_vm_did_not_publish(guestvm: GuestVm):
    from dataclasses import replace

    from gcpdl.ssh.session import open_transport

    real = guestvm.target()
    other = HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIBeF5Pmx0GQ1bG7u6u6bqQ7rE1Zt5kQbq0n2xwYz9S3k")
    forged = replace(real, guest_keys=(other,))
    with pytest.raises(HostKeyMismatch):
        open_transport(forged, key_path=guestvm.key.private_path)


# --- b) the startup script, run by the real metadata script runner ------------------------------


def test_startup_script_reaches_ready_on_a_cpu_vm(guestvm: GuestVm):
    t0 = time.time()
    script = render_startup_script(StartupOptions(gpu=False, jupyter_wait_seconds=JUPYTER_WAIT))
    guestvm.set_attributes(**{"startup-script": script})
    out = run_startup_scripts(guestvm).stdout
    assert "startup-script exit status 0" in out, out + guestvm.logs()
    assert guestvm.guest_attribute("gcpdl", "stage") == "ready"
    assert not guestvm.guest_attribute("gcpdl", "error")
    # Jupyter answers on the VM's loopback, run by the login user, as the unit says
    assert guestvm.run("curl", "-fsS", "http://127.0.0.1:8888/api", check=True).stdout.startswith("{")
    pid = guestvm.read("/run/guestvm-units/gcpdl-jupyter.service.pid")
    assert guestvm.run("ps", "-o", "user=", "-p", pid.strip(), check=True).stdout.strip() == "gcpdl"
    # the whole boot (the agent's writes and the script's) fits Google's per-minute budget
    writes = gcpdl_writes_since(guestvm, t0)
    assert len(guestvm.boot_writes) + len(writes) <= 10, writes


def test_startup_script_on_a_gpu_vm_without_driver_fails_with_a_clear_error(guestvm: GuestVm):
    t0 = time.time()
    script = render_startup_script(StartupOptions(gpu=True, driver_wait_seconds=1))
    guestvm.set_attributes(**{"startup-script": script})
    out = run_startup_scripts(guestvm).stdout
    assert "startup-script exit status 1" in out, out
    error = guestvm.guest_attribute("gcpdl", "error")
    assert error == "NVIDIA driver not ready after 1s: nvidia-smi not found"
    # the "ready" of the CPU run before must not outlive this failure (a restarted VM's case)
    assert guestvm.guest_attribute("gcpdl", "stage") == "failed"
    assert gcpdl_writes_since(guestvm, t0)


def test_startup_script_that_starts_before_the_agent_leaves_the_user_to_the_agent(guestvm: GuestVm):
    """systemd starts google-startup-scripts as soon as the agent notifies READY, which it does
    before its accounts pass. Made deterministic here by stopping the agent while the script
    starts, then letting it go once the script has either created the user itself or is waiting
    (a `sleep` in the namespace)."""
    user = "racer"
    agent = agent_pid(guestvm)
    entries = f"{guestvm.key.metadata_entry()}\n{guestvm.key.metadata_entry(user)}"
    script = render_startup_script(StartupOptions(user=user, gpu=False, jupyter_wait_seconds=JUPYTER_WAIT))

    def script_created_user() -> bool:
        return any(line.endswith(f" {user}") and "\tgoogle_guest_ag\t" not in line
                   for line in guestvm.log("useradd.log").splitlines())

    def something_sleeps() -> bool:
        return "sleep" in guestvm.process_names()

    guestvm.run("kill", "-STOP", agent, check=True)
    runner = None
    try:
        guestvm.set_attributes(**{"startup-script": script, "ssh-keys": entries})
        runner = guestvm.spawn("google_metadata_script_runner", "startup")
        guestvm.wait("the script to create the user or wait for it",
                     lambda: script_created_user() or something_sleeps() or runner.poll() is not None)
    finally:
        guestvm.run("kill", "-CONT", agent, check=True)
    try:
        out, _ = runner.communicate(timeout=SCRIPT_TIMEOUT)
        assert "startup-script exit status 0" in out, out
        guestvm.wait("the agent to install racer's key", lambda: guestvm.read(f"/home/{user}/.ssh/authorized_keys"))
        assert AGENT_GROUPS <= groups_of(guestvm, user)
        assert not script_created_user()
    finally:
        guestvm.set_attributes(**{"ssh-keys": guestvm.key.metadata_entry()})


def test_restarting_the_agent_does_not_republish_host_keys(guestvm: GuestVm):
    """The agent regenerates and publishes host keys only when the instance id changes (first
    boot), so "restart the guest agent so it republishes host keys" is no fix."""
    before = len(guestvm.writes())
    old = agent_pid(guestvm)
    guestvm.run("kill", old, check=True)
    guestvm.wait("the agent to stop", lambda: guestvm.run("pidof", "google_guest_agent").returncode != 0)
    # as systemd's Restart=always would; its first pass ends with the guest-agent/sshable write
    guestvm.spawn("sh", "-c", "exec google_guest_agent >>/run/guestvm/logs/agent.log 2>&1", env={"GUEST_AGENT_DEBUG": "1"})
    guestvm.wait("the restarted agent's first pass",
                 lambda: any(w["namespace"] == "guest-agent" for w in guestvm.writes()[before:]))
    assert [w for w in guestvm.writes()[before:] if w["namespace"] == "hostkeys"] == []


# --- c) OS Login ------------------------------------------------------------------------------

ALICE = "alice@example.com"
ALICE_USER = "alice_example_com"


def alice_profile(vm: GuestVm) -> dict:
    """A login profile as the OS Login API returns it (users.getLoginProfile)."""
    expiry = int((time.time() + 3600) * 1_000_000)
    fingerprint = "f" * 64
    return {
        "name": ALICE,
        "posixAccounts": [{
            "primary": True, "username": ALICE_USER, "uid": "2001", "gid": "2001",
            "homeDirectory": f"/home/{ALICE_USER}", "operatingSystemType": "LINUX",
            "accountId": "test-project", "name": f"users/{ALICE}/projects/test-project",
        }],
        "sshPublicKeys": {fingerprint: {
            "key": vm.key.public_line, "expirationTimeUsec": str(expiry), "fingerprint": fingerprint,
            "name": f"users/{ALICE}/sshPublicKeys/{fingerprint}",
        }},
    }


def test_os_login_replaces_the_ssh_keys_path(guestvm: GuestVm):
    guestvm.set_metadata({"oslogin": {
        "profiles": [alice_profile(guestvm)],
        "authorize": {ALICE: {"login": True, "adminLogin": False}},
    }})
    guestvm.set_os_login(True)
    try:
        sshd_config = guestvm.read("/etc/ssh/sshd_config")
        assert "AuthorizedKeysCommand /usr/bin/google_authorized_keys\nAuthorizedKeysCommandUser root" in sshd_config
        nss = {line.split(":")[0]: line for line in guestvm.read("/etc/nsswitch.conf").splitlines() if ":" in line}
        assert nss["passwd"].endswith(" cache_oslogin oslogin") and nss["group"].endswith(" cache_oslogin oslogin")
        assert "pam_oslogin_login.so" in guestvm.read("/etc/pam.d/sshd")
        # the ssh-keys user keeps its account but loses its key and sudo: no login
        guestvm.wait("the agent to take gcpdl's key away",
                     lambda: guestvm.read("/home/gcpdl/.ssh/authorized_keys") is None)
        assert guestvm.run("getent", "passwd", "gcpdl").returncode == 0
        assert "google-sudoers" not in groups_of(guestvm, "gcpdl")
        with pytest.raises(KeyNotAuthorized):
            login(guestvm, "gcpdl")

        # the real NSS module resolves the OS Login user through the metadata server
        entry = guestvm.run("getent", "passwd", ALICE_USER, check=True).stdout.strip()
        assert entry == f"{ALICE_USER}:*:2001:2001::/home/{ALICE_USER}:/bin/bash"
        with login(guestvm, ALICE_USER) as session:
            result = session.run("id -un; id -u; test -d $HOME && echo home")
        assert result.stdout.split() == [ALICE_USER, "2001", "home"], result.stderr

        # authorize says no: google_authorized_keys prints no key and PAM refuses the account
        guestvm.set_metadata({"oslogin": {"authorize": {ALICE: {"login": False, "adminLogin": False}}}})
        with pytest.raises(KeyNotAuthorized):
            login(guestvm, ALICE_USER)
    finally:
        guestvm.set_metadata({"oslogin": {"authorize": {ALICE: {"login": True, "adminLogin": False}}}})
        guestvm.set_os_login(False)
    # OS Login off again: the agent gives the ssh-keys user its key back
    guestvm.wait("the agent to restore gcpdl's key", lambda: guestvm.read("/home/gcpdl/.ssh/authorized_keys"))
    with login(guestvm) as session:
        assert session.run("id -un").stdout.strip() == "gcpdl"


def test_startup_script_serves_jupyter_to_the_os_login_user(guestvm: GuestVm):
    """With OS Login, gcpdl's login user is the POSIX name from the login profile: it exists only
    through the NSS module and has no home until its first SSH login (pam_mkhomedir)."""
    guestvm.set_metadata({"oslogin": {
        "profiles": [alice_profile(guestvm)],
        "authorize": {ALICE: {"login": True, "adminLogin": False}},
    }})
    guestvm.set_os_login(True)
    try:
        guestvm.run("rm", "-rf", f"/home/{ALICE_USER}", check=True)  # a VM nobody logged in to yet
        script = render_startup_script(StartupOptions(user=ALICE_USER, gpu=False, jupyter_wait_seconds=JUPYTER_WAIT))
        guestvm.set_attributes(**{"startup-script": script})
        out = run_startup_scripts(guestvm).stdout
        assert "startup-script exit status 0" in out, out
        assert guestvm.guest_attribute("gcpdl", "stage") == "ready"
        pid = guestvm.read("/run/guestvm-units/gcpdl-jupyter.service.pid")
        assert guestvm.run("ps", "-o", "user=", "-p", pid.strip(), check=True).stdout.strip() == ALICE_USER
        with login(guestvm, ALICE_USER) as session:
            assert session.run("curl -fsS http://127.0.0.1:8888/api").exit_code == 0
    finally:
        guestvm.run("systemctl", "stop", "gcpdl-jupyter.service", "gcpdl-autostop.service")
        guestvm.set_os_login(False)
        guestvm.wait("the agent to restore gcpdl's key", lambda: guestvm.read("/home/gcpdl/.ssh/authorized_keys"))


def test_with_os_login_on_at_boot_the_agent_never_creates_the_ssh_keys_user(guestvm: GuestVm, tmp_path):
    metadata = {
        "instance": {"attributes": {"enable-guest-attributes": "TRUE", "ssh-keys": guestvm.key.metadata_entry()}},
        "project": {"attributes": {"enable-oslogin": "TRUE"}},
    }
    vm = boot_guest(tmp_path / "oslogin-vm", metadata, guestvm.key)
    try:
        vm.wait("the agent's OS Login setup", lambda: any(w["namespace"] == "guest-agent" for w in vm.writes()))
        vm.wait("sshd_config to use google_authorized_keys",
                lambda: "AuthorizedKeysCommand" in (vm.read("/etc/ssh/sshd_config") or ""))
        assert vm.run("getent", "passwd", "gcpdl").returncode == 2
        assert "Creating user" not in vm.log("agent.log")
    finally:
        assert not vm.stop()


# --- nothing on the host changed ----------------------------------------------------------------


def test_the_host_is_untouched(guestvm: GuestVm):
    assert "gcpdl:" in guestvm.read("/etc/passwd")  # the guest's own /etc did change
    assert host_snapshot() == guestvm.host_before
    with open("/etc/passwd") as f:
        assert not any(line.startswith(("gcpdl:", "racer:")) for line in f)


# --- the stand-in itself, as the clients above need it (no root needed) --------------------------


@pytest.fixture
def standin():
    import http.client

    from tests.fakes.metadata_server import MetadataState, serve

    state = MetadataState()
    state.merge({"instance": {"attributes": {"enable-guest-attributes": "TRUE", "ssh-keys": "a:ssh-ed25519 AAAA a"}}})
    servers = serve(state, ("127.0.0.1", 0))
    port = servers[0].server_address[1]

    def get(path: str, headers: dict | None = None, method: str = "GET", body: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path, body=body, headers={"Metadata-Flavor": "Google"} if headers is None else headers)
        resp = conn.getresponse()
        out = (resp.status, dict(resp.getheaders()), resp.read().decode())
        conn.close()
        return out

    yield state, get
    for s in servers:
        s.shutdown()
        s.server_close()


def test_standin_requires_and_returns_metadata_flavor(standin):
    _, get = standin
    assert get("/computeMetadata/v1/instance/id", headers={})[0] == 403
    assert get("/computeMetadata/v1/instance/id", headers={"Metadata-Flavor": "Google", "X-Forwarded-For": "1.2.3.4"})[0] == 403
    status, headers, body = get("/computeMetadata/v1/instance/id")
    assert (status, headers["Metadata-Flavor"], body) == (200, "Google", "4520031799277581234")


def test_standin_recursive_json_is_shaped_for_the_agent(standin):
    import json

    _, get = standin
    status, headers, body = get("/computeMetadata/v1//?recursive=true&alt=json&last_etag=NONE")
    tree = json.loads(body)
    assert status == 200 and headers["ETag"]
    nic = tree["instance"]["networkInterfaces"][0]  # numbered directories are arrays, keys camelCase
    assert nic["forwardedIps"] == [] and nic["mac"]
    assert tree["instance"]["attributes"]["enable-guest-attributes"] == "TRUE"  # custom keys as written
    assert "oslogin" not in tree
    assert get("/computeMetadata/v1/instance/attributes/")[2] == "enable-guest-attributes\nssh-keys\n"


def test_standin_long_poll_returns_on_change_with_a_new_etag(standin):
    import threading

    state, get = standin
    etag = get("/computeMetadata/v1/instance/attributes/ssh-keys")[1]["ETag"]
    answer: list = []
    t = threading.Thread(target=lambda: answer.append(
        get(f"/computeMetadata/v1/instance/attributes/ssh-keys?wait_for_change=true&last_etag={etag}")))
    t.start()
    state.merge({"instance": {"attributes": {"ssh-keys": "b:ssh-ed25519 BBBB b"}}})
    t.join(30)
    status, headers, body = answer[0]
    assert (status, body) == (200, "b:ssh-ed25519 BBBB b") and headers["ETag"] != etag


def test_standin_guest_attributes_are_recorded_and_queryable(standin):
    state, get = standin
    assert get("/computeMetadata/v1/instance/guest-attributes/gcpdl/stage", method="PUT", body="boot")[0] == 200
    assert get("/computeMetadata/v1/instance/guest-attributes/gcpdl/stage")[2] == "boot"
    assert [(w.namespace, w.key, w.value) for w in state.writes] == [("gcpdl", "stage", "boot")]
    assert state.query("gcpdl/")["queryValue"]["items"] == [{"namespace": "gcpdl", "key": "stage", "value": "boot"}]
    state.merge({"instance": {"attributes": {"enable-guest-attributes": None}}})
    assert get("/computeMetadata/v1/instance/guest-attributes/gcpdl/stage", method="PUT", body="x")[0] == 403


def test_standin_os_login_answers_404_until_enabled(standin):
    import json

    state, get = standin
    profile = {"name": "a@example.com", "posixAccounts": [{"username": "a_example_com", "uid": "2001", "gid": "2001"}]}
    state.merge({"oslogin": {"profiles": [profile], "authorize": {"a@example.com": {"login": True}}}})
    assert get("/computeMetadata/v1/oslogin/users?username=a_example_com")[0] == 404
    state.merge({"project": {"attributes": {"enable-oslogin": "TRUE"}}})
    status, _, body = get("/computeMetadata/v1/oslogin/users?username=a_example_com")
    assert status == 200 and json.loads(body)["loginProfiles"][0]["name"] == "a@example.com"
    assert json.loads(get("/computeMetadata/v1/oslogin/users?uid=2001")[2])["loginProfiles"][0] == profile
    assert get("/computeMetadata/v1/oslogin/users?username=nobody")[0] == 404
    assert json.loads(get("/computeMetadata/v1/oslogin/authorize?email=a@example.com&policy=login")[2]) == {"success": True}
    assert json.loads(get("/computeMetadata/v1/oslogin/authorize?email=a@example.com&policy=adminLogin")[2]) == {"success": False}
    first = json.loads(get("/computeMetadata/v1/oslogin/users?pagesize=1000")[2])
    last = json.loads(get(f"/computeMetadata/v1/oslogin/users?pagesize=1000&pagetoken={first['nextPageToken']}")[2])
    assert len(first["loginProfiles"]) == 1 and last == {"nextPageToken": "0"}
