"""The gateway's JSON over HTTP routes as the Python standard library sees them (`urllib`), with
Google's own protobuf JSON parser as the judge of the proto3 JSON mapping: requests written by
`json_format`, answers and errors (`google.rpc.Status` with typed details) read back by it.

All tests share one sandboxed gateway (module-scoped, no callers: loopback only); each test uses
its own demo instance, since an upgrade keeps one `EngineVersionUpgrading` for 20 s.
"""

import json
import urllib.error
import urllib.request
import uuid

from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "dds-gateway"


def call(gateway, method, path, body=None, headers=None, timeout=10):
    """Sends one request; returns (HTTP status, headers, body bytes), errors included."""
    request = urllib.request.Request(
        f"http://{gateway}{path}",
        data=body.encode() if body is not None else None,
        method=method,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def status_of(body):
    """The error body parsed as `google.rpc.Status` (unknown fields refused), and its details."""
    status = json_format.Parse(body, status_pb2.Status())
    details = {}
    for any_ in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.PreconditionFailure,
        ):
            if any_.Is(cls.DESCRIPTOR):
                detail = cls()
                any_.Unpack(detail)
                details[cls.DESCRIPTOR.name] = detail
    return status, details


def test_an_upgrade_written_by_json_format_is_read_back_by_it(gateway, gateway_pb):
    request = gateway_pb.pb2.UpgradeEngineVersionRequest(
        engine_version="4.4",
        request_id=str(uuid.uuid4()),
        switch_mode=gateway_pb.pb2.SWITCH_MODE_IMMEDIATE,
    )
    body = json_format.MessageToJson(request)
    assert '"engineVersion": "4.4"' in body and "SWITCH_MODE_IMMEDIATE" in body
    status, headers, answer = call(
        gateway,
        "POST",
        "/v1/instances/dds-sandbox01:upgradeEngineVersion",
        body,
        {"Content-Type": "application/json"},
    )
    assert status == 200, answer
    assert headers["Content-Type"] == "application/json"
    parsed = json_format.Parse(answer, gateway_pb.pb2.UpgradeEngineVersionResponse())
    assert parsed.db_instance_id == "dds-sandbox01"
    assert parsed.engine_version == "4.4"
    assert parsed.previous_engine_version == "4.2"
    assert parsed.alibaba_request_id

    # A retry with the same requestId is a replay, not a second upgrade.
    status, headers, again = call(
        gateway,
        "POST",
        "/v1/instances/dds-sandbox01:upgradeEngineVersion",
        body,
        {"Content-Type": "application/json"},
    )
    assert status == 200
    assert headers["dds-gateway-idempotent-replay"] == "true"
    assert json.loads(again)["alibabaRequestId"] == parsed.alibaba_request_id


def test_get_engine_version(gateway, gateway_pb):
    status, _, answer = call(gateway, "GET", "/v1/instances/dds-sandbox02/engineVersion?regionId=cn-hangzhou")
    assert status == 200, answer
    parsed = json_format.Parse(answer, gateway_pb.pb2.GetEngineVersionResponse())
    assert (parsed.db_instance_id, parsed.status, parsed.engine_version) == ("dds-sandbox02", "Running", "4.4")
    assert "5.0" in parsed.available_engine_versions


def test_a_watch_is_one_json_message_per_line(gateway, gateway_pb):
    # The instance never reaches 5.0 within a second: one message, then the deadline's error line.
    status, headers, answer = call(
        gateway, "GET", "/v1/instances/dds-sandbox03/engineVersion:watch?engineVersion=7.0&timeout=1s"
    )
    assert status == 200, answer
    assert headers["Content-Type"] == "application/x-ndjson"
    lines = answer.decode().splitlines()
    first = json_format.Parse(lines[0], gateway_pb.pb2.WatchUpgradeResponse())
    assert (first.status, first.engine_version, first.target_engine_version, first.done) == (
        "Running",
        "5.0",
        "7.0",
        False,
    )
    error, details = status_of(json.dumps(json.loads(lines[-1])["error"]))
    assert error.code == 4
    assert details["ErrorInfo"].reason == "DEADLINE_EXCEEDED"


def test_errors_are_google_rpc_status_json_with_googles_http_status(gateway):
    status, _, body = call(
        gateway,
        "POST",
        "/v1/instances/DDS-BAD:upgradeEngineVersion",
        '{"engineVersion": "9.9"}',
        {"Content-Type": "application/json"},
    )
    assert status == 400
    error, details = status_of(body)
    assert error.code == 3
    assert details["ErrorInfo"].domain == DOMAIN
    assert details["ErrorInfo"].reason == "INVALID_REQUEST"
    fields = [v.field for v in details["BadRequest"].field_violations]
    assert fields == ["db_instance_id", "engine_version"]

    status, _, body = call(
        gateway,
        "POST",
        "/v1/instances/dds-sandboxbusy:upgradeEngineVersion",
        '{"engineVersion": "5.0"}',
        {"Content-Type": "application/json"},
    )
    assert status == 400
    error, details = status_of(body)
    assert error.code == 9
    assert details["PreconditionFailure"].violations[0].type == "INSTANCE_STATE"

    for method, path, body, headers, http, reason in [
        ("GET", "/v1/nothing", None, {}, 404, "ROUTE_NOT_FOUND"),
        ("PUT", "/v1/instances/dds-sandbox01/engineVersion", None, {}, 405, "METHOD_NOT_ALLOWED"),
        (
            "POST",
            "/v1/instances/dds-sandbox01:upgradeEngineVersion",
            "engineVersion=4.4",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "POST",
            "/v1/instances/dds-sandbox01:upgradeEngineVersion",
            '{"engineVersion": "4.4", "unknown": 1}',
            {"Content-Type": "application/json"},
            400,
            "INVALID_JSON",
        ),
    ]:
        status, _, answer = call(gateway, method, path, body, headers)
        assert status == http, answer
        _, details = status_of(answer)
        assert details["ErrorInfo"].reason == reason
