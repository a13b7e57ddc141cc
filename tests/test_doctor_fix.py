"""`gcpdl doctor --fix` (issue 10 §1): with the user's yes, enable the Compute API through the
Service Usage API (its stand-in on 127.0.0.1, reached through the client factory), keep project
and the cheapest zone for the GPU in gcpdl's config, and point at the quota request page."""

from __future__ import annotations

import json

import pytest

from gcpdl import settings as settings_mod
from tests.fakes.serviceusage_server import FakeServiceUsage
from tests.helpers import run


@pytest.fixture(scope="module")
def serviceusage_server(fake_compute):
    fake = FakeServiceUsage(fake_compute.project, fake_compute.project_number,
                            token_ok=lambda token: token in fake_compute._tokens).start()
    yield fake
    fake.stop()


@pytest.fixture
def su(gcp, serviceusage_server, monkeypatch):
    """Service Usage stand-in wired to the fake Compute server: enabling compute.googleapis.com
    there is what makes Compute stop answering accessNotConfigured."""
    serviceusage_server.reset()
    serviceusage_server.on_enable = lambda service: setattr(gcp, "api_disabled", False)
    monkeypatch.setenv("GCPDL_SERVICEUSAGE_ENDPOINT", serviceusage_server.url)
    monkeypatch.setenv("GCPDL_RESOURCEMANAGER_ENDPOINT", serviceusage_server.url)
    return serviceusage_server


def test_endpoint_comes_from_env_or_config(monkeypatch):
    from gcpdl.clients import ClientFactory

    assert ClientFactory(settings_mod.resolve()).serviceusage_endpoint == "https://serviceusage.googleapis.com"
    settings_mod.write_config_value("serviceusage_endpoint", "https://su.p.googleapis.com")
    assert ClientFactory(settings_mod.resolve()).serviceusage_endpoint == "https://su.p.googleapis.com"
    monkeypatch.setenv("GCPDL_SERVICEUSAGE_ENDPOINT", "127.0.0.1:9")
    assert ClientFactory(settings_mod.resolve()).serviceusage_endpoint == "http://127.0.0.1:9"


def test_fix_enables_compute_and_picks_the_cheapest_zone(su, gcp):
    gcp.disable_api()
    before = run("doctor", "--json")
    assert before.exit_code == 1
    result = run("doctor", "--fix", "--yes", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["fixed"][0] == "Enabled compute.googleapis.com in project test-project."
    # T4 is offered in us-central1 (4 zones), us-east1 (2) and europe-west4 (1); the US regions
    # cost the same, and us-central1 has more zones to fail over to
    assert data["fixed"][1].startswith("Saved zone = us-central1-a in ")
    assert settings_mod.resolve().zone == "us-central1-a"
    assert ("POST", "/v1/projects/test-project/services/compute.googleapis.com:enable") in su.requests
    assert sum(1 for m, p in su.requests if p.startswith("/v1/operations/")) == 2  # followed the operation to done
    assert gcp.calls("compute.instances.insert") == []


def test_fix_asks_and_no_changes_nothing(su, gcp):
    gcp.disable_api()
    result = run("doctor", "--fix", input="n\n")
    assert result.exit_code == 1
    assert "Enable compute.googleapis.com in project test-project (free; takes about a minute)? [Y/n]" in result.stderr
    assert "Nothing that gcpdl can fix by itself" in result.stderr
    assert su.enabled == set() and gcp.api_disabled


def test_fix_saves_a_project_given_as_a_flag(su, gcp, monkeypatch):
    monkeypatch.delenv("GCPDL_PROJECT")
    monkeypatch.setenv("GCPDL_ZONE", "us-east1-c")
    result = run("doctor", "--fix", "--yes", "--project", "test-project")
    assert result.exit_code == 0, result.output
    assert "Saved project = test-project in " in result.stderr
    assert "zone" not in result.stderr  # us-east1-c offers a T4: the zone set is kept
    assert settings_mod.resolve(env={}).project == "test-project"


def test_fix_replaces_a_zone_without_the_gpu(su, gcp, monkeypatch):
    monkeypatch.setenv("GCPDL_ZONE", "us-east1-d")  # no V100 there
    settings_mod.write_config_value("zone", "us-east1-d")
    result = run("doctor", "--fix", "--yes", "--gpu", "v100", "--json")
    fixed = json.loads(result.stdout)["fixed"]
    assert fixed and fixed[-1].startswith("Saved zone = us-central1-a")  # cheapest V100 zone


def test_permission_denied_says_what_to_do(su, gcp):
    gcp.disable_api()
    su.deny()
    result = run("doctor", "--fix", "--yes")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Google refused to enable compute.googleapis.com in project test-project: "
                                    "Permission denied to enable service [compute.googleapis.com] ")
    assert "gcloud auth login, then gcloud services enable compute.googleapis.com --project test-project" in result.stderr


def test_quota_zero_prints_the_request_link_with_the_metric(su, gcp, monkeypatch):
    monkeypatch.setenv("GCPDL_ZONE", "us-central1-a")
    gcp.set_quota("NVIDIA_T4_GPUS", 0, region="us-central1")
    result = run("doctor", "--fix", "--yes")
    assert result.exit_code == 1
    assert "metric=compute.googleapis.com/nvidia_t4_gpus" in result.stdout
    assert "free-trial accounts must upgrade" in result.stdout


def _no_project_anywhere(gcp, monkeypatch, tmp_path) -> None:
    """Like a learner who ran only `gcloud auth application-default login`: credentials that
    name no project, and no project set anywhere."""
    key = json.loads(gcp.key_file.read_text())
    key.pop("project_id", None)
    (tmp_path / "key.json").write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    monkeypatch.delenv("GCPDL_PROJECT")


def test_no_project_anywhere_the_only_one_is_offered_then_the_rest_is_fixed(su, gcp, monkeypatch, tmp_path):
    _no_project_anywhere(gcp, monkeypatch, tmp_path)
    gcp.disable_api()
    assert run("doctor").exit_code == 1
    result = run("doctor", "--fix", input="y\ny\ny\n")
    assert result.exit_code == 0, result.output
    assert "Use project test-project (My First Project), the only one your account sees, and save it in gcpdl's config? [Y/n]" in result.stderr
    assert "Enable compute.googleapis.com in project test-project" in result.stderr
    assert "Use zone us-central1-a, the cheapest that offers NVIDIA T4 16 GB ($" in result.stderr
    s = settings_mod.resolve()
    assert (s.project, s.zone) == ("test-project", "us-central1-a")
    assert ("GET", "/v1/projects") in [(m, p.split("?")[0]) for m, p in su.requests]


def test_no_project_and_several_visible_lists_them(su, gcp, monkeypatch, tmp_path):
    _no_project_anywhere(gcp, monkeypatch, tmp_path)
    su.projects += [{"projectId": "thesis-gpu", "name": "Thesis", "lifecycleState": "ACTIVE"},
                    {"projectId": "old-one", "name": "Old", "lifecycleState": "DELETE_REQUESTED"}]
    result = run("doctor", "--fix", "--yes")
    assert result.exit_code == 1
    assert "Your projects: test-project, thesis-gpu. Pick one: gcpdl config set project PROJECT_ID" in result.stderr
    assert settings_mod.resolve().project is None
