"""The fake Compute Engine server, driven by the REAL google-cloud-compute client over HTTP.

Every client here comes from gcpdl's ClientFactory with settings resolved from the environment
the ``gcp`` fixture sets, so these tests also prove the ADC path (a service-account key whose
token_uri is the fake) and the endpoint override.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from google.api_core import exceptions

import gcpdl.settings
from gcpdl.clients import ClientFactory

ZONE = "us-central1-a"
DLVM = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"


@pytest.fixture
def factory(gcp) -> ClientFactory:
    return ClientFactory(gcpdl.settings.resolve())


def instance_body(name: str = "box", zone: str = ZONE, gpu: str | None = "nvidia-tesla-t4", count: int = 1,
                  machine: str = "n1-standard-4", terminate: bool = True, disk_gb: int = 100, labels=None, **extra):
    from google.cloud import compute_v1

    inst = compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/{machine}",
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image=DLVM, disk_size_gb=disk_gb, disk_type=f"zones/{zone}/diskTypes/pd-balanced"))],
        network_interfaces=[compute_v1.NetworkInterface(
            network="global/networks/default",
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")])],
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key="enable-guest-attributes", value="TRUE")]),
        labels=labels or {"gcpdl": "true"},
        **extra,
    )
    if gpu:
        inst.guest_accelerators = [compute_v1.AcceleratorConfig(
            accelerator_type=f"zones/{zone}/acceleratorTypes/{gpu}", accelerator_count=count)]
    if terminate:
        inst.scheduling = compute_v1.Scheduling(on_host_maintenance="TERMINATE", automatic_restart=True)
    return inst


def insert_and_wait(factory: ClientFactory, inst, zone: str = ZONE):
    op = factory.compute("InstancesClient").insert(project="test-project", zone=zone, instance_resource=inst)
    return factory.compute("ZoneOperationsClient").wait(project="test-project", zone=zone, operation=op.name)


# --- happy path ------------------------------------------------------------------------------

def test_insert_t4_wait_and_get_running(gcp, factory):
    done = insert_and_wait(factory, instance_body())
    assert done.status.name == "DONE" and not done.error.errors
    assert done.operation_type == "insert"
    assert done.target_link.endswith("/projects/test-project/zones/us-central1-a/instances/box")
    got = factory.compute("InstancesClient").get(project="test-project", zone=ZONE, instance="box")
    assert got.status == "RUNNING"
    assert got.network_interfaces[0].access_configs[0].nat_i_p == "127.0.0.1"
    assert got.guest_accelerators[0].accelerator_type.endswith("/acceleratorTypes/nvidia-tesla-t4")
    assert got.scheduling.on_host_maintenance == "TERMINATE"
    assert got.labels["gcpdl"] == "true" and got.label_fingerprint
    assert got.last_start_timestamp and got.creation_timestamp.endswith(("-08:00", "-07:00"))
    # the boot disk exists as its own resource, sized as asked, in use by the VM
    disk = gcp.disks()[0]
    assert disk["name"] == "box" and disk["sizeGb"] == "100" and disk["users"] == [got.self_link]
    # the exact body the client sent: int64 as a string, enums as names
    sent = gcp.calls("compute.instances.insert")[0].body
    assert sent["disks"][0]["initializeParams"]["diskSizeGb"] == "100"
    assert sent["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_operation_advances_over_polls_and_instance_states(gcp, factory):
    gcp.operation_polls = 3
    op = factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert gcp.instance(ZONE, "box")["status"] == "PROVISIONING"
    ops = factory.compute("ZoneOperationsClient")
    first = ops.get(project="test-project", zone=ZONE, operation=op.name)
    assert first.status.name == "RUNNING" and gcp.instance(ZONE, "box")["status"] == "STAGING"
    ops.wait(project="test-project", zone=ZONE, operation=op.name)
    last = ops.wait(project="test-project", zone=ZONE, operation=op.name)
    assert last.status.name == "DONE" and gcp.instance(ZONE, "box")["status"] == "RUNNING"
    # stop -> STOPPING -> TERMINATED, start -> RUNNING again
    client = factory.compute("InstancesClient")
    stop = client.stop(project="test-project", zone=ZONE, instance="box")
    assert gcp.instance(ZONE, "box")["status"] == "STOPPING"
    gcp.operation_polls = 1
    for _ in range(3):
        ops.wait(project="test-project", zone=ZONE, operation=stop.name)
    assert gcp.instance(ZONE, "box")["status"] == "TERMINATED"
    start = client.start(project="test-project", zone=ZONE, instance="box")
    assert ops.wait(project="test-project", zone=ZONE, operation=start.name).status.name == "DONE"
    assert client.get(project="test-project", zone=ZONE, instance="box").status == "RUNNING"


def test_delete_removes_vm_and_auto_delete_disk_but_keeps_data_disk(gcp, factory):
    from google.cloud import compute_v1

    disks = factory.compute("DisksClient")
    op = disks.insert(project="test-project", zone=ZONE, disk_resource=compute_v1.Disk(
        name="box-data", size_gb=200, type_=f"zones/{ZONE}/diskTypes/pd-balanced"))
    factory.compute("ZoneOperationsClient").wait(project="test-project", zone=ZONE, operation=op.name)
    inst = instance_body()
    inst.disks.append(compute_v1.AttachedDisk(source=f"zones/{ZONE}/disks/box-data", auto_delete=False))
    insert_and_wait(factory, inst)
    assert gcp.disks()[1]["users"]
    # a disk in use cannot be deleted
    with pytest.raises(exceptions.BadRequest) as e:
        disks.delete(project="test-project", zone=ZONE, disk="box-data")
    assert e.value.code == 400 and "is already being used by" in e.value.message
    op = factory.compute("InstancesClient").delete(project="test-project", zone=ZONE, instance="box")
    factory.compute("ZoneOperationsClient").wait(project="test-project", zone=ZONE, operation=op.name)
    assert gcp.instances() == []
    assert [d["name"] for d in gcp.disks()] == ["box-data"] and "users" not in gcp.disks()[0]


# --- strict validation -----------------------------------------------------------------------

def test_unknown_field_is_rejected_with_the_real_400(gcp, factory):
    session = factory.session
    url = f"{factory.compute_base_url}/projects/test-project/zones/{ZONE}/instances"
    r = session.post(url, json={"name": "box", "foo": 1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] == "Invalid JSON payload received. Unknown name \"foo\" at 'instance': Cannot find field."
    assert err["status"] == "INVALID_ARGUMENT" and err["errors"][0]["reason"] == "invalid"
    nested = session.post(url, json={"name": "box", "scheduling": {"onHostMaintenance": "SOMETIMES"}})
    assert nested.status_code == 400
    assert "scheduling.on_host_maintenance" in nested.json()["error"]["message"]
    wrong_type = session.post(url, json={"name": "box", "disks": [{"initializeParams": {"diskSizeGb": "ten"}}]})
    assert wrong_type.status_code == 400 and "disk_size_gb" in wrong_type.json()["error"]["message"]
    assert gcp.instances() == []


def test_gpu_without_terminate_is_rejected(gcp, factory):
    with pytest.raises(exceptions.BadRequest) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone=ZONE,
                                                  instance_resource=instance_body(terminate=False))
    assert e.value.errors[0]["message"] == "Instances with guest accelerators do not support live migration."
    assert gcp.instances() == [] and gcp.disks() == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Bad_Name"), "Invalid value for field 'resource.name': 'Bad_Name'. Must be a match of regex"),
    (dict(count=8), "Accelerator count must be between 1 and 4"),
    (dict(machine="e2-standard-4"), "[e2-standard-4, nvidia-tesla-t4] features are not compatible for creating instance."),
    (dict(machine="n1-nonsense-4"), "Machine type with name 'n1-nonsense-4' does not exist in zone 'us-central1-a'."),
    (dict(disk_gb=20), "Requested disk size cannot be smaller than the image size (50 GB)"),
])
def test_real_rules_are_enforced(gcp, factory, kwargs, message):
    zone = kwargs.get("zone", ZONE)
    with pytest.raises(exceptions.BadRequest) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone=zone, instance_resource=instance_body(**kwargs))
    assert message in e.value.message
    assert gcp.instances() == []


def test_gpu_not_offered_in_the_zone_is_not_found(gcp, factory):
    with pytest.raises(exceptions.NotFound) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone="us-east1-d",
                                                  instance_resource=instance_body(zone="us-east1-d", gpu="nvidia-tesla-v100"))
    assert e.value.errors[0]["message"] == "The resource 'projects/test-project/zones/us-east1-d/acceleratorTypes/nvidia-tesla-v100' was not found"
    assert gcp.instances() == []


def test_duplicate_is_a_conflict_with_reason_only_in_errors(gcp, factory):
    insert_and_wait(factory, instance_body())
    with pytest.raises(exceptions.Conflict) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert e.value.errors[0]["message"] == "The resource 'projects/test-project/zones/us-central1-a/instances/box' already exists"
    assert e.value.errors[0]["reason"] == "alreadyExists"
    assert len(gcp.instances()) == 1


def test_not_found_has_the_real_message(gcp, factory):
    with pytest.raises(exceptions.NotFound) as e:
        factory.compute("InstancesClient").get(project="test-project", zone=ZONE, instance="ghost")
    # api_core prefixes .message with "GET <url>: "; the API's own text is in .errors
    assert e.value.message.endswith(": The resource 'projects/test-project/zones/us-central1-a/instances/ghost' was not found")
    assert e.value.errors[0]["message"] == "The resource 'projects/test-project/zones/us-central1-a/instances/ghost' was not found"


def test_unknown_route_404s_like_the_front_end(gcp, factory):
    r = factory.session.get(f"{factory.compute_base_url}/projects/test-project/zones/{ZONE}/widgets")
    assert r.status_code == 404 and "was not found on this server" in r.text


# --- faults ----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"])
def test_stockout_ends_the_operation_in_error(gcp, factory, code):
    gcp.stockout(ZONE, code=code, zones_available=["us-central1-b"])
    done = insert_and_wait(factory, instance_body())
    assert done.status.name == "DONE"
    err = done.error.errors[0]
    assert err.code == code and "does not have enough resources available" in err.message
    assert done.http_error_status_code == 503
    meta = err.error_details[0].error_info.metadatas
    assert meta["zonesAvailable"] == "us-central1-b"
    if code.endswith("_WITH_DETAILS"):
        assert meta["vmType"] == "n1-standard-4" and meta["attachment"] == "nvidia-tesla-t4=1"
    assert gcp.instances() == [] and gcp.disks() == []  # nothing is left behind
    # .result() raises on an operation error when httpErrorStatusCode is set. Its poller would
    # call the real endpoint, so the operation is made DONE in the insert response itself.
    gcp.operation_polls = 0
    op = factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    with pytest.raises(exceptions.ServiceUnavailable) as e:  # built from httpErrorStatusCode
        op.result(timeout=5)
    assert f"{code}: The zone 'projects/test-project/zones/us-central1-a' does not have enough resources" in str(e.value)


def test_operation_error_without_http_status_makes_result_return_silently(gcp, factory):
    """A fact about the client, kept visible: the adapter must read op.error itself."""
    gcp.stockout(ZONE)
    gcp.omit_http_error_status = True
    gcp.operation_polls = 0  # DONE in the insert response: the library's poller (real endpoint) never runs
    op = factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert op.result(timeout=5) is None
    done = factory.compute("ZoneOperationsClient").get(project="test-project", zone=ZONE, operation=op.name)
    assert done.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED" and not done.http_error_status_code


def test_sync_503_stockout(gcp, factory):
    gcp.stockout(ZONE, sync_503=True)
    with pytest.raises(exceptions.ServiceUnavailable) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert "does not have enough resources available" in e.value.message
    assert len(gcp.calls("compute.instances.insert")) == 1  # mutations are not retried by the client


def test_quota_project_is_sync_403_and_regional_ends_operation(gcp, factory):
    gcp.set_quota("GPUS_ALL_REGIONS", 0)
    with pytest.raises(exceptions.Forbidden) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert e.value.errors[0]["message"] == "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
    assert e.value.errors[0]["reason"] == "quotaExceeded"
    gcp.set_quota("GPUS_ALL_REGIONS", 8)
    gcp.set_quota("NVIDIA_T4_GPUS", 1, region="us-central1", usage=1)
    done = insert_and_wait(factory, instance_body())
    err = done.error.errors[0]
    assert err.code == "QUOTA_EXCEEDED" and err.message == "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1."
    assert err.error_details[0].quota_info.metric_name == "compute.googleapis.com/nvidia_t4_gpus"
    # the same VM in another region fits
    assert not insert_and_wait(factory, instance_body(zone="us-east1-c"), zone="us-east1-c").error.errors
    region = factory.compute("RegionsClient").get(project="test-project", region="us-east1")
    t4 = next(q for q in region.quotas if q.metric == "NVIDIA_T4_GPUS")
    assert t4.usage == 1.0 and t4.limit == 16.0
    project = factory.compute("ProjectsClient").get(project="test-project")
    assert next(q for q in project.quotas if q.metric == "GPUS_ALL_REGIONS").usage == 1.0


def test_api_disabled_billing_permission_and_missing_project(gcp, factory):
    client = factory.compute("InstancesClient")
    gcp.disable_api()
    with pytest.raises(exceptions.Forbidden) as e:
        client.get(project="test-project", zone=ZONE, instance="x")
    assert e.value.reason == "SERVICE_DISABLED" and "compute.googleapis.com" in e.value.message
    assert e.value.errors[0]["reason"] == "accessNotConfigured"
    gcp.reset()
    gcp.disable_billing()
    with pytest.raises(exceptions.Forbidden) as e:
        client.get(project="test-project", zone=ZONE, instance="x")
    assert e.value.reason == "BILLING_DISABLED"
    gcp.reset()
    gcp.deny("compute.instances.create")
    with pytest.raises(exceptions.Forbidden) as e:
        client.insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert e.value.errors[0]["message"] == "Required 'compute.instances.create' permission for 'projects/test-project/zones/us-central1-a/instances/box'"
    gcp.reset()
    gcp.project_missing()
    with pytest.raises(exceptions.NotFound) as e:
        factory.compute("ProjectsClient").get(project="test-project")
    assert e.value.errors[0]["message"] == "The resource 'projects/test-project' was not found"


def test_client_retries_reads_on_503_but_not_429_or_mutations(gcp, factory):
    gcp.add_instance("box")
    client = factory.compute("InstancesClient")
    gcp.fail_next(503, times=2, method="GET")
    assert client.get(project="test-project", zone=ZONE, instance="box").name == "box"
    assert len(gcp.calls("compute.instances.get")) == 3
    # the retry predicate names DeadlineExceeded, but an HTTP 504 arrives as GatewayTimeout: not retried
    for status, exc in ((504, exceptions.GatewayTimeout), (429, exceptions.TooManyRequests), (500, exceptions.InternalServerError)):
        gcp.fail_next(status, method="GET")
        with pytest.raises(exc):
            client.get(project="test-project", zone=ZONE, instance="box")
    assert len(gcp.calls("compute.instances.get")) == 6  # 3 for the 503s, then one each
    gcp.fail_next(503, method="POST")
    with pytest.raises(exceptions.ServiceUnavailable):
        client.stop(project="test-project", zone=ZONE, instance="box")
    assert len(gcp.calls("compute.instances.stop")) == 1


def test_preemption_shows_terminated_and_a_preempted_operation(gcp, factory):
    gcp.add_instance("spotty", spot=True)
    gcp.preempt(ZONE, "spotty")
    got = factory.compute("InstancesClient").get(project="test-project", zone=ZONE, instance="spotty")
    assert got.status == "TERMINATED" and got.scheduling.provisioning_model == "SPOT" and got.last_stop_timestamp
    ops = factory.compute("ZoneOperationsClient").list(request={
        "project": "test-project", "zone": ZONE, "filter": 'operationType="compute.instances.preempted"'})
    ops = list(ops)
    assert len(ops) == 1 and ops[0].target_link == got.self_link


# --- reads -----------------------------------------------------------------------------------

def test_aggregated_list_across_zones(gcp, factory):
    gcp.add_instance("a", zone="us-central1-a", labels={"gcpdl": "true"})
    gcp.add_instance("b", zone="europe-west4-a", labels={"gcpdl": "true"}, status="TERMINATED")
    gcp.add_instance("other", zone="us-east1-c", labels={})
    pages = factory.compute("InstancesClient").aggregated_list(request={"project": "test-project", "filter": "labels.gcpdl = true"})
    found = {inst.name: scope for scope, scoped in pages for inst in scoped.instances}
    assert found == {"a": "zones/us-central1-a", "b": "zones/europe-west4-a"}
    accel = factory.compute("AcceleratorTypesClient").aggregated_list(project="test-project")
    t4_zones = sorted(scope for scope, scoped in accel for a in scoped.accelerator_types if a.name == "nvidia-tesla-t4")
    assert "zones/us-east1-d" in t4_zones and len(t4_zones) == 7
    h100 = factory.compute("AcceleratorTypesClient").get(project="test-project", zone=ZONE, accelerator_type="nvidia-h100-80gb")
    assert h100.maximum_cards_per_instance == 8
    mt = factory.compute("MachineTypesClient").get(project="test-project", zone=ZONE, machine_type="a2-highgpu-1g")
    assert mt.accelerators[0].guest_accelerator_type == "nvidia-tesla-a100" and mt.guest_cpus == 12
    image = factory.compute("ImagesClient").get_from_family(project="deeplearning-platform-release",
                                                           family="common-cu128-ubuntu-2204-nvidia-570")
    assert image.disk_size_gb == 50


def test_pagination_through_the_real_pager(gcp, factory):
    for i in range(5):
        gcp.add_instance(f"vm-{i}", gpu=None)
    items = factory.compute("InstancesClient").list(request={"project": "test-project", "zone": ZONE, "max_results": 2})
    assert [i.name for i in items] == [f"vm-{i}" for i in range(5)]
    assert [r.query.get("pageToken") for r in gcp.calls("compute.instances.list")] == [None, "2", "4"]


def test_guest_attributes(gcp, factory):
    gcp.add_instance("box", guest_attributes={"hostkeys": {"ssh-ed25519": "AAAAC3Nz..."}})
    client = factory.compute("InstancesClient")
    ga = client.get_guest_attributes(request={"project": "test-project", "zone": ZONE, "instance": "box", "query_path": "hostkeys/"})
    assert [(i.namespace, i.key, i.value) for i in ga.query_value.items] == [("hostkeys", "ssh-ed25519", "AAAAC3Nz...")]
    gcp.add_instance("quiet", metadata={})
    with pytest.raises(exceptions.NotFound):
        client.get_guest_attributes(request={"project": "test-project", "zone": ZONE, "instance": "quiet", "query_path": "hostkeys/"})


def test_set_metadata_checks_fingerprint(gcp, factory):
    from google.cloud import compute_v1

    gcp.add_instance("box")
    client = factory.compute("InstancesClient")
    inst = client.get(project="test-project", zone=ZONE, instance="box")
    md = compute_v1.Metadata(fingerprint=inst.metadata.fingerprint, items=[compute_v1.Items(key="ssh-keys", value="gcpdl:ssh-ed25519 AAAA")])
    op = client.set_metadata(project="test-project", zone=ZONE, instance="box", metadata_resource=md)
    assert factory.compute("ZoneOperationsClient").wait(project="test-project", zone=ZONE, operation=op.name).status.name == "DONE"
    assert gcp.instance(ZONE, "box")["metadata"]["items"] == [{"key": "ssh-keys", "value": "gcpdl:ssh-ed25519 AAAA"}]
    with pytest.raises(exceptions.PreconditionFailed) as e:
        client.set_metadata(project="test-project", zone=ZONE, instance="box", metadata_resource=md)  # stale now
    assert e.value.errors[0]["reason"] == "conditionNotMet"


def test_firewall_lifecycle(gcp, factory):
    from google.cloud import compute_v1

    fws = factory.compute("FirewallsClient")
    ops = factory.compute("GlobalOperationsClient")
    rule = compute_v1.Firewall(name="gcpdl-ssh", network="global/networks/default", direction="INGRESS",
                               allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
                               source_ranges=["203.0.113.7/32"], target_tags=["gcpdl"])
    op = fws.insert(project="test-project", firewall_resource=rule)
    assert ops.wait(project="test-project", operation=op.name).status.name == "DONE"
    narrower = compute_v1.Firewall(source_ranges=["198.51.100.9/32"])  # firewalls.patch, the real API call
    op = fws.patch(project="test-project", firewall="gcpdl-ssh", firewall_resource=narrower)
    ops.wait(project="test-project", operation=op.name)
    got = fws.get(project="test-project", firewall="gcpdl-ssh")
    assert list(got.source_ranges) == ["198.51.100.9/32"] and got.allowed[0].ports == ["22"]
    assert gcp.calls("compute.firewalls.patch")[0].body == {"sourceRanges": ["198.51.100.9/32"]}
    op = fws.delete(project="test-project", firewall="gcpdl-ssh")
    ops.wait(project="test-project", operation=op.name)
    assert gcp.firewalls() == []


# --- auth and the lean path ------------------------------------------------------------------

def test_requests_without_a_valid_token_are_401(gcp, factory):
    import requests

    r = requests.get(f"{factory.compute_base_url}/projects/test-project/zones/{ZONE}/instances")
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    r = requests.get(f"{factory.compute_base_url}/projects/test-project/zones/{ZONE}/instances",
                     headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401


def test_lean_rest_read_uses_the_token_endpoint(gcp, factory):
    gcp.add_instance("box", creation=datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc))
    before = gcp.token_requests
    r = factory.session.get(f"{factory.compute_base_url}/projects/test-project/zones/{ZONE}/instances/box")
    assert r.status_code == 200 and r.json()["creationTimestamp"] == "2026-11-01T04:00:00.000-08:00"
    assert gcp.token_requests == before + 1 and gcp.auth_seen["token"] >= 1
    assert gcp.requests[-1].path == "/compute/v1/projects/test-project/zones/us-central1-a/instances/box"


def test_clock_is_settable_for_cost_timelines(gcp, factory):
    gcp.now = lambda: datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    gcp.add_instance("box")
    gcp.advance(3600)
    client = factory.compute("InstancesClient")
    op = client.stop(project="test-project", zone=ZONE, instance="box")
    factory.compute("ZoneOperationsClient").wait(project="test-project", zone=ZONE, operation=op.name)
    got = client.get(project="test-project", zone=ZONE, instance="box")
    assert got.last_start_timestamp == "2026-11-25T04:00:00.000-08:00"
    assert got.last_stop_timestamp == "2026-11-25T05:00:00.000-08:00"


# --- deeper faults and timing ----------------------------------------------------------------

def test_lost_reply_then_retry_with_request_id_returns_the_same_operation(gcp, factory):
    client = factory.compute("InstancesClient")
    gcp.fail_next(503, method="POST", path="/instances$", after=True)
    with pytest.raises(exceptions.ServiceUnavailable):
        client.insert(request={"project": "test-project", "zone": ZONE, "instance_resource": instance_body(), "request_id": "7d1c3f4e-0f6b-4c52-9a8e-000000000001"})
    assert gcp.instance(ZONE, "box") is not None  # it happened; only the reply was lost
    again = client.insert(request={"project": "test-project", "zone": ZONE, "instance_resource": instance_body(), "request_id": "7d1c3f4e-0f6b-4c52-9a8e-000000000001"})
    assert [again.name] == list(gcp.operations)  # the first attempt's operation, not a new one
    assert len(gcp.instances()) == 1
    # without the requestId the retry is a Conflict
    with pytest.raises(exceptions.Conflict):
        client.insert(project="test-project", zone=ZONE, instance_resource=instance_body())


def test_client_does_not_set_request_id_by_itself(gcp, factory):
    factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert "requestId" not in gcp.calls("compute.instances.insert")[0].query


def test_time_based_operations_and_blocking_wait(gcp, factory):
    import time

    gcp.operation_seconds = 0.3
    gcp.method_latency = {"compute.instances.insert": 0.1}
    ops = factory.compute("ZoneOperationsClient")
    t0 = time.monotonic()
    op = factory.compute("InstancesClient").insert(project="test-project", zone=ZONE, instance_resource=instance_body())
    assert ops.get(project="test-project", zone=ZONE, operation=op.name).status.name == "RUNNING"
    done = ops.wait(project="test-project", zone=ZONE, operation=op.name)
    elapsed = time.monotonic() - t0
    assert done.status.name == "DONE" and gcp.instance(ZONE, "box")["status"] == "RUNNING"
    assert elapsed >= 0.4  # latency + operation time were really spent (a floor, not a speed assertion)


def test_spot_uses_preemptible_quota(gcp, factory):
    from google.cloud import compute_v1

    gcp.set_quota("PREEMPTIBLE_NVIDIA_T4_GPUS", 1, region="us-central1", usage=1)
    spot = instance_body(terminate=False)
    spot.scheduling = compute_v1.Scheduling(provisioning_model="SPOT", instance_termination_action="STOP")
    done = insert_and_wait(factory, spot)
    assert done.error.errors[0].message == "Quota 'PREEMPTIBLE_NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1."
    # no preemptible quota at all: Spot VMs draw on the standard quota
    gcp.set_quota("PREEMPTIBLE_NVIDIA_T4_GPUS", 0, region="us-central1")
    gcp.set_quota("NVIDIA_T4_GPUS", 0, region="us-central1")
    done = insert_and_wait(factory, spot)
    assert done.error.errors[0].message == "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in region us-central1."
    gcp.set_quota("NVIDIA_T4_GPUS", 1, region="us-central1")
    assert not insert_and_wait(factory, spot).error.errors
    quotas = {q["metric"]: q["usage"] for q in factory.session.get(f"{gcp.url}/compute/v1/projects/test-project/regions/us-central1").json()["quotas"]}
    assert (quotas["NVIDIA_T4_GPUS"], quotas["PREEMPTIBLE_NVIDIA_T4_GPUS"]) == (1, 0)
    got = gcp.instance(ZONE, "box")["scheduling"]
    assert got["onHostMaintenance"] == "TERMINATE" and got["preemptible"] is True and got["automaticRestart"] is False


def test_start_of_stopped_gpu_vm_checks_quota_and_stockout(gcp, factory):
    gcp.add_instance("box", status="TERMINATED")
    client = factory.compute("InstancesClient")
    ops = factory.compute("ZoneOperationsClient")
    gcp.stockout(ZONE, code="ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")
    op = client.start(project="test-project", zone=ZONE, instance="box")
    err = ops.wait(project="test-project", zone=ZONE, operation=op.name).error.errors[0]
    assert err.code == "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS" and "(resource type:compute)" in err.message
    assert gcp.instance(ZONE, "box")["status"] == "TERMINATED"


def test_labels_and_metadata_keys_are_checked(gcp, factory):
    with pytest.raises(exceptions.BadRequest) as e:
        factory.compute("InstancesClient").insert(project="test-project", zone=ZONE,
                                                  instance_resource=instance_body(labels={"Owner": "x"}))
    assert "Label key 'Owner' violates format constraints" in e.value.errors[0]["message"]
    gcp.add_instance("box")
    inst = factory.compute("InstancesClient").get(project="test-project", zone=ZONE, instance="box")
    from google.cloud import compute_v1

    req = compute_v1.InstancesSetLabelsRequest(label_fingerprint=inst.label_fingerprint, labels={"gcpdl": "true", "owner": "ana"})
    op = factory.compute("InstancesClient").set_labels(project="test-project", zone=ZONE, instance="box",
                                                       instances_set_labels_request_resource=req)
    factory.compute("ZoneOperationsClient").wait(project="test-project", zone=ZONE, operation=op.name)
    assert gcp.instance(ZONE, "box")["labels"] == {"gcpdl": "true", "owner": "ana"}
    with pytest.raises(exceptions.PreconditionFailed):
        factory.compute("InstancesClient").set_labels(project="test-project", zone=ZONE, instance="box",
                                                      instances_set_labels_request_resource=req)


def test_zones_regions_disks_reads(gcp, factory):
    zones = [z.name for z in factory.compute("ZonesClient").list(project="test-project")]
    assert "us-central1-f" in zones and "europe-west4-a" in zones
    region = factory.compute("RegionsClient").get(project="test-project", region="us-central1")
    assert {q.metric for q in region.quotas} >= {"NVIDIA_T4_GPUS", "PREEMPTIBLE_NVIDIA_T4_GPUS", "NVIDIA_L4_GPUS",
                                                 "NVIDIA_A100_GPUS", "NVIDIA_A100_80GB_GPUS", "NVIDIA_H100_GPUS", "CPUS"}
    gcp.add_instance("a", zone="us-east1-c")
    disks = factory.compute("DisksClient").aggregated_list(project="test-project")
    found = {(scope, d.name) for scope, scoped in disks for d in scoped.disks}
    assert found == {("zones/us-east1-c", "a")}
    with pytest.raises(exceptions.NotFound):
        factory.compute("ImagesClient").get_from_family(project="deeplearning-platform-release", family="no-such-family")


def test_unknown_query_parameter_is_rejected(gcp, factory):
    base = f"{factory.compute_base_url}/projects/test-project/zones/{ZONE}/instances"
    r = factory.session.get(base, params={"filtr": "name = x"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ('Invalid JSON payload received. Unknown name "filtr": Cannot bind query parameter. '
                                            "Field 'filtr' could not be found in request message.")
    assert factory.session.get(base, params={"filter": "name = x", "alt": "json"}).status_code == 200


def test_return_partial_success_is_accepted_where_the_doc_recommends_it(gcp, factory):
    r = factory.session.get(f"{factory.compute_base_url}/projects/test-project/aggregated/instances",
                            params={"returnPartialSuccess": "true", "maxResults": "500"})
    assert r.status_code == 200


def test_check_validates_a_planned_request_without_sending_it(gcp):
    path = f"/compute/v1/projects/test-project/zones/{ZONE}/instances"
    assert gcp.check("POST", path, {"name": "box", "machineType": f"zones/{ZONE}/machineTypes/n1-standard-4"}) is None
    assert gcp.check("POST", path, {"name": "box", "gpu": "t4"}) == \
        "Invalid JSON payload received. Unknown name \"gpu\" at 'instance': Cannot find field."
    assert gcp.check("PUT", path, {}).startswith("No such method")
    assert gcp.requests == [] and gcp.instances() == []


def test_preempting_a_delete_action_spot_vm_removes_it(gcp):
    gcp.add_instance("gone", spot=True)
    gcp.instances_by_key[(ZONE, "gone")]["scheduling"]["instanceTerminationAction"] = "DELETE"
    op = gcp.preempt(ZONE, "gone")
    assert op["operationType"] == "compute.instances.preempted" and op["status"] == "DONE"
    assert gcp.instance(ZONE, "gone") is None and gcp.disks() == []


def test_start_can_hand_out_a_new_external_address(gcp, factory):
    gcp.add_instance("box", status="TERMINATED", nat_ip="127.0.0.1")
    gcp.start_nat_ip = "127.0.0.2"
    op = factory.compute("InstancesClient").start(project="test-project", zone=ZONE, instance="box")
    factory.compute("ZoneOperationsClient").wait(project="test-project", zone=ZONE, operation=op.name)
    assert gcp.instance(ZONE, "box")["networkInterfaces"][0]["accessConfigs"][0]["natIP"] == "127.0.0.2"


def test_a_seeded_vm_with_an_unknown_machine_type_does_not_break_quota_reads(gcp, factory):
    gcp.add_instance("odd", machine_type="custom-8-32768", gpu=None)
    region = factory.compute("RegionsClient").get(project="test-project", region="us-central1")
    assert next(q for q in region.quotas if q.metric == "CPUS").usage == 0.0
    assert gcp.crashes == []
