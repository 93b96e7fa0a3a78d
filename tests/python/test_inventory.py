"""`GET /v1/instances` (ListInstances) as curl sees it, against `serve --sandbox` and its
generated fleet: repeated and nested query parameters, the answer read by Google's own
`json_format`, and refusals as JSON `google.rpc.Status`.
"""

import json
import subprocess

from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

BOTH_REGIONS = ["regionIds=cn-hangzhou", "regionIds=cn-shenzhen"]


def curl(gateway, *params):
    """GET /v1/instances with `params` (each `name=value`, URL-encoded by curl); returns the
    HTTP status and the body."""
    args = ["curl", "-sS", "-G", "-o", "-", "-w", "\n%{http_code}", f"http://{gateway}/v1/instances"]
    for param in params:
        args += ["--data-urlencode", param]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def listed(gateway, gateway_pb, *params):
    code, body = curl(gateway, *params)
    assert code == 200, body
    return json_format.Parse(body, gateway_pb.pb2.ListInstancesResponse()).instances


def test_lists_the_whole_fleet_of_both_types(gateway, gateway_pb):
    instances = listed(gateway, gateway_pb, *BOTH_REGIONS)
    ids = [i.db_instance_id for i in instances]
    fleet = [i for i in ids if i.startswith("dds-fleet")]
    assert len(fleet) == 40, ids
    assert len(ids) == len(set(ids)), "each instance once"
    assert {"dds-sandbox01", "dds-sandboxsz"} <= set(ids)
    assert {i.instance_type for i in instances} == {"replicate", "sharding"}
    assert {i.region_id for i in instances} == {"cn-hangzhou", "cn-shenzhen"}
    locked = {i.db_instance_id for i in instances if i.lock_mode != "Unlock"}
    assert locked == {"dds-fleet007", "dds-fleet023"}
    # Without regions: the gateway's default region only.
    default = listed(gateway, gateway_pb)
    assert {i.region_id for i in default} == {"cn-hangzhou"}


def test_filters_combine_as_query_parameters(gateway, gateway_pb):
    everything = listed(gateway, gateway_pb, *BOTH_REGIONS)

    def tags(instance):
        return {t.key: t.value for t in instance.tags}

    want = {
        i.db_instance_id
        for i in everything
        if tags(i).get("env") == "prod"
        and "team" in tags(i)
        and i.instance_type == "sharding"
        and i.engine_version in ("4.2", "4.4")
    }
    assert want, "the demo fleet has such instances"
    got = listed(
        gateway,
        gateway_pb,
        *BOTH_REGIONS,
        "tags.key=env",
        "tags.value=prod",
        "tags.key=team",
        "instanceTypes=sharding",
        "engineVersions=4.2",
        "engine_versions=4.4",
    )
    assert {i.db_instance_id for i in got} == want

    patterned = listed(gateway, gateway_pb, *BOTH_REGIONS, "instancePatterns=dds-fleet00?")
    assert {i.db_instance_id for i in patterned} == {
        i.db_instance_id for i in everything if i.db_instance_id.startswith("dds-fleet00")
    }


def error_of(body):
    status = json_format.Parse(body, status_pb2.Status())
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    for any_ in status.details:
        if any_.Is(info.DESCRIPTOR):
            any_.Unpack(info)
        if any_.Is(bad.DESCRIPTOR):
            any_.Unpack(bad)
    return status, info, bad


def test_bad_filters_are_refused_with_the_field(gateway):
    code, body = curl(gateway, "engineVersions=9.9", "instanceTypes=serverless")
    assert code == 400, body
    status, info, bad = error_of(body)
    assert status.code == 3  # INVALID_ARGUMENT
    assert {v.field for v in bad.field_violations} >= {"engine_versions", "instance_types"}

    # A message field needs one of its fields named.
    code, body = curl(gateway, "tags=env")
    assert code == 400, body
    status, info, _ = error_of(body)
    assert info.reason == "INVALID_PARAMETER"
    assert "tags.key" in status.message, json.loads(body)
