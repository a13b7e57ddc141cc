"""Issue 9 items 2 and 3: no setting reaches ~/.ssh/config (or a URL, or a request) unchecked,
and ~/.ssh/config itself is edited with care (links, backup, a folder at that path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gcpdl.errors import ConfigError, InvalidInput
from gcpdl.ssh import sshconfig
from tests.helpers import run

INJECTED_USER = "gcpdl\n    ProxyCommand touch /tmp/gcpdl-pwned"


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("credits", "nan", "Error: Invalid credits 'nan': expected a finite number."),
        ("credits", "-3", "Error: Invalid credits '-3': expected an amount in USD, 0 or more."),
        ("confirm_above", "-1", "Error: Invalid confirm_above '-1': expected a price in USD per hour, 0 or more."),
        ("poll_interval", "0", "Error: Invalid poll_interval '0': expected seconds, more than 0 and at most 60."),
        ("ssh_wait", "inf", "Error: Invalid ssh_wait 'inf': expected a finite number."),
        ("ssh_port", "99999", "Error: Invalid ssh_port '99999': expected a port number from 1 to 65535."),
        ("ssh_port", "22.5", "Error: Invalid ssh_port '22.5': expected a port number from 1 to 65535."),
        ("zone", "nowhere", "Error: Invalid zone 'nowhere': expected a zone like us-central1-a."),
        ("zones", "us-central1-a,bogus", "Error: Invalid zones 'us-central1-a,bogus': expected a zone like us-central1-a."),
        ("ssh_from", "garbage", "Error: Invalid ssh_from 'garbage': expected an IPv4 address or range like 203.0.113.7/32."),
        ("compute_endpoint", "not a url", "Error: Invalid compute_endpoint 'not a url': expected a URL like https://compute.googleapis.com."),
        ("compute_endpoint", "ftp://x", "Error: Invalid compute_endpoint 'ftp://x': expected a URL like https://compute.googleapis.com."),
        ("project", "Bad Project", "Error: Invalid project 'Bad Project': expected a project id like my-project-123 "
                                   "(6-30 lowercase letters, digits or hyphens, starting with a letter)."),
        ("ssh_user", INJECTED_USER, "Error: Invalid ssh_user 'gcpdl\\n    ProxyCommand touch /tmp/gcpdl-pwned': expected a login "
                                    "name: letters, digits, '_', '.' or '-', starting with a letter or '_' (at most 32)."),
    ],
)
def test_config_set_refuses_bad_values_and_writes_nothing(isolated_env: Path, key, value, expected):
    result = run("config", "set", key, value)
    assert one_error_line(result) == expected
    assert not (isolated_env / ".config" / "gcpdl").exists()


@pytest.mark.parametrize(
    "key, value, stored",
    [
        ("zones", "us-central1-a, us-east1-c", ["us-central1-a", "us-east1-c"]),
        ("storage_endpoint", "localhost:9023", "http://localhost:9023"),
        ("compute_endpoint", "https://compute.googleapis.com/compute/v1/", "https://compute.googleapis.com"),
        ("ssh_from", "203.0.113.7", "203.0.113.7/32"),
        ("ssh_port", "2222", 2222),
        ("credits", "0", 0.0),
        ("project", "example.com:my-project", "example.com:my-project"),
    ],
)
def test_config_set_stores_the_clean_value(key, value, stored):
    from gcpdl.settings import resolve

    assert run("config", "set", key, value).exit_code == 0
    assert getattr(resolve(), key) == stored


def test_newline_in_ssh_user_from_the_environment_is_refused_before_anything(monkeypatch, isolated_env: Path):
    monkeypatch.setenv("GCPDL_SSH_USER", INJECTED_USER)
    line = one_error_line(run("config", "show"))
    assert line.startswith("Error: Invalid ssh_user 'gcpdl\\n    ProxyCommand") and "(from GCPDL_SSH_USER)" in line
    assert line.endswith("Fix or unset GCPDL_SSH_USER.")
    assert not (isolated_env / ".ssh").exists()


def test_bad_value_in_config_toml_is_refused_when_loaded(isolated_env: Path):
    path = isolated_env / ".config" / "gcpdl" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('ssh_user = "gcpdl\\nProxyCommand touch /tmp/x"\n')
    line = one_error_line(run("status"))
    assert f"(in {path})" in line and line.endswith("Fix it there, or run: gcpdl config set ssh_user VALUE")
    path.write_text("ssh_port = 99999\n")
    assert "Invalid ssh_port 99999" in one_error_line(run("config", "show"))


def test_profiles_that_are_not_tables_give_one_line(isolated_env: Path):
    path = isolated_env / ".config" / "gcpdl" / "config.toml"
    path.parent.mkdir(parents=True)
    for text in ("profiles = 3\n", "[profiles]\nwork = 3\n"):
        path.write_text(text)
        line = one_error_line(run("--profile", "work", "config", "show"))
        assert line == f"Error: In {path}, 'profiles' must hold tables like [profiles.work]. Fix or remove 'profiles' in {path}."
        assert one_error_line(run("--profile", "work", "config", "set", "zone", "us-central1-a")) == line
        assert path.read_text() == text


def test_ssh_config_writer_refuses_control_characters_whatever_the_caller(isolated_env: Path):
    """Even a caller that skipped settings validation cannot inject a directive."""
    with pytest.raises(InvalidInput):
        sshconfig.refresh_host("box", "203.0.113.7", 1, user=INJECTED_USER)
    with pytest.raises(InvalidInput):
        sshconfig.refresh_host("box", "203.0.113.7", "1\nProxyCommand x")
    assert not sshconfig.managed_path().exists()
    assert sshconfig.ssh_value("/a dir/100%", "path", tokens=True) == '"/a dir/100%%"'


def test_symlinked_ssh_config_is_edited_in_place_and_backed_up_once(isolated_env: Path):
    dotfiles = isolated_env / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "ssh_config"
    real.write_text("Host work\n    HostName 10.0.0.1\n")
    os.chmod(real, 0o600)
    ssh = isolated_env / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").symlink_to(real)
    sshconfig.refresh_host("box", "203.0.113.7", 1)
    assert (ssh / "config").is_symlink() and os.readlink(ssh / "config") == str(real)
    assert real.read_text().startswith(sshconfig.INCLUDE_COMMENT)
    assert real.read_text().endswith("Host work\n    HostName 10.0.0.1\n")
    backup = ssh / "config.gcpdl-backup"
    assert backup.read_text() == "Host work\n    HostName 10.0.0.1\n"
    assert (backup.stat().st_mode & 0o777) == 0o600
    # the include is there now: later refreshes change nothing, and the backup stays the original
    real.write_text(real.read_text() + "# edited later\n")
    sshconfig.refresh_host("box", "203.0.113.8", 1)
    assert backup.read_text() == "Host work\n    HostName 10.0.0.1\n"


def test_no_backup_when_there_was_no_config(isolated_env: Path):
    sshconfig.refresh_host("box", "203.0.113.7", 1)
    assert not (isolated_env / ".ssh" / "config.gcpdl-backup").exists()


def test_a_folder_at_ssh_config_is_one_error(isolated_env: Path):
    (isolated_env / ".ssh" / "config").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        sshconfig.refresh_host("box", "203.0.113.7", 1)
    assert str(e.value) == f"{isolated_env}/.ssh/config is a folder, not a file, so gcpdl cannot add its Include line there."
