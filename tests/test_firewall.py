"""The caller's address for the SSH rule (issue 9 item 6) and the rules' own logic."""

from __future__ import annotations

import json

import pytest

from gcpdl.compute import firewall
from gcpdl.errors import GcpdlError, InvalidInput
from tests.helpers import run


def echo(answers: dict[str, str | Exception]):
    """A lookup that answers per URL (the real one fetches https; tests never leave loopback)."""
    asked = []

    def lookup(url: str, timeout: float) -> str:
        asked.append(url)
        value = answers[url]
        if isinstance(value, Exception):
            raise value
        return value

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


FIRST, SECOND = firewall.IP_ECHO_URLS


@pytest.mark.parametrize("bad", ["<html>rate limited</html>", "10.0.0.7", "192.168.1.4", "127.0.0.1", "169.254.169.254",
                                 "100.64.3.2", "2001:db8::1", "0.0.0.0", "224.0.0.1", ""])
def test_a_bad_first_answer_asks_the_next_service(bad):
    lookup = echo({FIRST: bad, SECOND: "198.51.100.23\n"})
    assert firewall.my_ip(env={}, lookup=lookup) == "198.51.100.23"
    assert lookup.asked == [FIRST, SECOND]


def test_a_good_first_answer_is_enough():
    lookup = echo({FIRST: "198.51.100.23", SECOND: OSError("never asked")})
    assert firewall.my_ip(env={}, lookup=lookup) == "198.51.100.23"
    assert lookup.asked == [FIRST]


def test_no_usable_answer_is_refused_with_the_fix():
    lookup = echo({FIRST: "10.1.2.3", SECOND: TimeoutError()})
    with pytest.raises(GcpdlError) as e:
        firewall.my_ip(env={}, lookup=lookup)
    assert "answered '10.1.2.3', a private address" in e.value.message
    assert "TimeoutError" in e.value.message
    assert "--ssh-from" in (e.value.fix or "")


def test_ipv6_answers_are_refused():
    lookup = echo({FIRST: "2001:db8::1", SECOND: "fe80::1"})
    with pytest.raises(GcpdlError, match="IPv6"):
        firewall.my_ip(env={}, lookup=lookup)


@pytest.mark.parametrize("value, message", [
    ("0.0.0.0/0", "is a range"),
    ("203.0.113.7/32", "is a range"),
    ("10.0.0.1", "a private address"),
    ("::1", "IPv6"),
    ("garbage", "not an IP address"),
])
def test_gcpdl_my_ip_must_be_a_public_address(value, message):
    with pytest.raises(InvalidInput, match=message):
        firewall.my_ip(env={"GCPDL_MY_IP": value}, lookup=echo({}))


def test_gcpdl_my_ip_cidr_never_becomes_a_double_prefix(env, monkeypatch):
    """GCPDL_MY_IP=0.0.0.0/0 used to yield 0.0.0.0/0/32 (dry-run) and a refused or world-open rule."""
    monkeypatch.setenv("GCPDL_MY_IP", "0.0.0.0/0")
    for args in (("--dry-run", "--json"), ("--yes",)):
        result = run("up", "box", *args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("Error: GCPDL_MY_IP='0.0.0.0/0' is a range; it must be your public IPv4 address.")
        assert "/0/32" not in result.output
    assert env.requests == []


@pytest.mark.parametrize("cidr, warned", [("0.0.0.0/0", "the whole internet"), ("0.0.0.0/1", "2,147,483,648 addresses"),
                                          ("10.0.0.0/7", "33,554,432 addresses"), ("198.51.100.0/8", None),
                                          ("198.51.100.0/24", None)])
def test_wide_sources_warn(env, cidr, warned):
    result = run("up", "box", "--dry-run", "--json", "--ssh-from", cidr)
    assert result.exit_code == 0, result.output
    if warned:
        assert f"Warning: SSH will be open to {warned}" in result.stderr
    else:
        assert "Warning: SSH will be open" not in result.stderr
    assert json.loads(result.stdout)["ssh_from"] == str(__import__("ipaddress").ip_network(cidr, strict=False))


def test_world_open_rules_are_found_for_gcpdl_vms():
    vms = [("box", "default", ["gcpdl-box"]), ("other", "lab", ["gcpdl-other"])]
    rules = [
        {"name": "default-allow-ssh", "network": ".../networks/default", "priority": 65534, "direction": "INGRESS",
         "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"]},
        {"name": "web", "network": ".../networks/default", "priority": 1000, "allowed": [{"IPProtocol": "tcp", "ports": ["80", "8888"]}],
         "sourceRanges": ["0.0.0.0/0"], "targetTags": ["gcpdl-box"]},
        {"name": "early-ssh", "network": ".../networks/default", "priority": 500, "allowed": [{"IPProtocol": "all"}],
         "sourceRanges": ["0.0.0.0/0"]},
        {"name": "tagged-elsewhere", "network": ".../networks/default", "allowed": [{"IPProtocol": "all"}],
         "sourceRanges": ["0.0.0.0/0"], "targetTags": ["db"]},
        {"name": "office", "network": ".../networks/default", "allowed": [{"IPProtocol": "all"}], "sourceRanges": ["198.51.100.0/24"]},
        {"name": "off", "network": ".../networks/default", "disabled": True, "allowed": [{"IPProtocol": "all"}],
         "sourceRanges": ["0.0.0.0/0"]},
        {"name": "gcpdl-ssh-box", "network": ".../networks/default", "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
         "sourceRanges": ["0.0.0.0/0"], "targetTags": ["gcpdl-box"]},
        {"name": "gcpdl-deny-ssh-box", "network": ".../networks/default", "priority": 2000,
         "denied": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["gcpdl-box"]},
    ]
    found = {o.rule: o for o in firewall.world_open_rules(rules, vms)}
    assert sorted(found) == ["default-allow-ssh", "early-ssh", "web"]
    assert found["default-allow-ssh"].harmless and found["default-allow-ssh"].vms == ("box",)
    assert "covers port 22 but not the other ports" in found["web"].message()
    assert "gcloud compute firewall-rules delete web" in found["web"].message()
    assert "outranks gcpdl's deny rule: SSH is open to everyone" in found["early-ssh"].message()
    # without its deny rule, default-allow-ssh opens the VM to everyone
    without = [r for r in rules if r["name"] != "gcpdl-deny-ssh-box"]
    found = {o.rule: o for o in firewall.world_open_rules(without, vms)}
    assert found["default-allow-ssh"].ssh_open
    assert "deny rule for box is missing" in found["default-allow-ssh"].message()
    # doctor's view: VMs `up` would create in the default network
    found = {o.rule: o for o in firewall.world_open_rules(rules, [], new_vms_network="default")}
    assert sorted(found) == ["default-allow-ssh", "early-ssh"] and found["default-allow-ssh"].harmless
