"""`gcpdl doctor`: each failed check prints its exact fix; exit code says whether all passed."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run


@pytest.fixture
def env(gcp, monkeypatch):
    monkeypatch.setenv("GCPDL_ZONE", "us-central1-a")
    return gcp


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_all_checks_pass(env):
    result = run("doctor", "--gpu", "t4", "--spot", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert [c["name"] for c in data["checks"]] == [
        "credentials", "project", "compute api", "billing", "network default", "firewall", "os login", "quota GPUS_ALL_REGIONS",
        "quota NVIDIA_T4_GPUS", "quota PREEMPTIBLE_NVIDIA_T4_GPUS",
    ]
    assert env.calls("compute.instances.insert") == []
    human = run("doctor")
    assert human.exit_code == 0
    assert human.stdout.splitlines()[-1] == "All checks passed: gcpdl up is ready."


def test_no_credentials(monkeypatch):
    # google-auth reads NO_GCE_CHECK once, at import, and only as lowercase "true"; without this
    # its metadata-server ping backs off ~3 s before giving up on 127.0.0.1:9.
    from google.auth.compute_engine import _metadata

    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)
    result = run("doctor", "--json")
    assert result.exit_code == 1
    (c,) = json.loads(result.stdout)["checks"]
    assert c["name"] == "credentials" and not c["ok"]
    assert c["fix"] == "Run: gcloud auth application-default login"


def test_api_disabled(env):
    env.disable_api()
    result = run("doctor")
    assert result.exit_code == 1
    assert "FAIL  compute api: The Compute Engine API (compute.googleapis.com) is not enabled in project test-project." in result.stdout
    assert "      fix: Run: gcloud services enable compute.googleapis.com --project test-project" in result.stdout


def test_billing_disabled(env):
    env.disable_billing()
    result = run("doctor", "--json")
    assert result.exit_code == 1
    c = checks(result)["billing"]
    assert not c["ok"]
    assert c["fix"] == "Link a billing account: https://console.cloud.google.com/billing/linkedaccount?project=test-project"


def test_zero_gpu_quotas_say_what_to_request(env):
    env.set_quota("GPUS_ALL_REGIONS", 0)
    env.set_quota("PREEMPTIBLE_NVIDIA_L4_GPUS", 2, region="us-central1", usage=2)  # all in use: no room either
    result = run("doctor", "--gpu", "l4", "--spot", "--json")
    assert result.exit_code == 1
    c = checks(result)
    page = "https://console.cloud.google.com/iam-admin/quotas?project=test-project&metric=compute.googleapis.com"
    wait = ("(approval usually takes from a few hours to 2 business days; "
            "free-trial accounts must upgrade to a paid account before any GPU quota is granted).")
    assert c["quota GPUS_ALL_REGIONS"]["detail"] == "Quota GPUS_ALL_REGIONS (all regions) is 0, so no VM with this GPU can be created."
    assert c["quota GPUS_ALL_REGIONS"]["fix"] == f"Request GPUS_ALL_REGIONS >= 1 at {page}/gpus_all_regions {wait}"
    assert c["quota NVIDIA_L4_GPUS"]["ok"]
    assert c["quota PREEMPTIBLE_NVIDIA_L4_GPUS"]["detail"] == (
        "Quota PREEMPTIBLE_NVIDIA_L4_GPUS in us-central1 is 2 with 2 in use: no room for 1 more.")
    assert c["quota PREEMPTIBLE_NVIDIA_L4_GPUS"]["fix"] == (
        f"Request PREEMPTIBLE_NVIDIA_L4_GPUS >= 3 in us-central1 at {page}/preemptible_nvidia_l4_gpus {wait}")


def test_spot_without_preemptible_quota_uses_the_standard_quota(env):
    env.set_quota("PREEMPTIBLE_NVIDIA_T4_GPUS", 0, region="us-central1")
    result = run("doctor", "--spot", "--json")
    assert result.exit_code == 0, result.output
    assert checks(result)["quota PREEMPTIBLE_NVIDIA_T4_GPUS"]["detail"] == "limit 0 in us-central1: Spot VMs use NVIDIA_T4_GPUS instead"


def test_unknown_gpu_is_an_input_error(env):
    result = run("doctor", "--gpu", "k80")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Unknown GPU 'k80'.")
