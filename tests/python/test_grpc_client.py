"""The gateway as a stock `grpcio` client sees it: stubs generated from the proto, rich error
details (`grpc-status-details-bin`), health checking, server reflection and deadlines.

All tests share one sandboxed gateway (module-scoped). An upgrade keeps a sandbox instance in
`EngineVersionUpgrading` for 20 s, so each test uses its own demo instance.
"""

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

SERVICE = "dds.gateway.v1.EngineVersionService"
DOMAIN = "dds-gateway"


@pytest.fixture(scope="module")
def stub(channel, gateway_pb):
    return gateway_pb.grpc.EngineVersionServiceStub(channel)


def upgrade(stub, gateway_pb, **fields):
    return stub.UpgradeEngineVersion(gateway_pb.pb2.UpgradeEngineVersionRequest(**fields), timeout=10)


def upgrade_error(stub, gateway_pb, **fields):
    """Calls expecting failure; returns the RpcError and its decoded details by type."""
    with pytest.raises(grpc.RpcError) as raised:
        upgrade(stub, gateway_pb, **fields)
    err = raised.value
    status = rpc_status.from_call(err)
    assert status is not None, f"{err.code()} without grpc-status-details-bin: {err.details()!r}"
    assert status.code == err.code().value[0]
    details = {}
    for any_ in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                details[cls] = msg
    # Every gateway error carries ErrorInfo in the gateway's domain.
    info = details.get(error_details_pb2.ErrorInfo)
    assert info is not None and info.domain == DOMAIN, status
    return err, info, details


def test_upgrade_succeeds(stub, gateway_pb):
    resp = upgrade(stub, gateway_pb, db_instance_id="dds-sandbox02", engine_version="5.0")
    assert resp.alibaba_request_id
    assert resp.db_instance_id == "dds-sandbox02"
    assert resp.engine_version == "5.0"
    assert resp.validate_only is False


def test_invalid_request_lists_each_bad_field(stub, gateway_pb):
    err, info, details = upgrade_error(stub, gateway_pb, db_instance_id="BAD", engine_version="9.9")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.reason == "INVALID_REQUEST"
    bad = details.get(error_details_pb2.BadRequest)
    assert bad is not None, "validation errors must carry google.rpc.BadRequest"
    fields = {v.field for v in bad.field_violations}
    assert {"db_instance_id", "engine_version"} <= fields, bad
    assert all(v.description for v in bad.field_violations)


def test_unknown_instance_is_not_found(stub, gateway_pb):
    err, info, _ = upgrade_error(stub, gateway_pb, db_instance_id="dds-nope1", engine_version="5.0")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert info.metadata["alibabaCode"] == "InvalidInstanceId.NotFound"
    assert info.metadata["alibabaRequestId"]


def test_busy_instance_fails_precondition(stub, gateway_pb):
    err, info, _ = upgrade_error(stub, gateway_pb, db_instance_id="dds-sandboxbusy", engine_version="5.0")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "INSTANCE_STATE_INCORRECT"


def test_forbidden_instance_is_permission_denied(stub, gateway_pb):
    err, _, _ = upgrade_error(stub, gateway_pb, db_instance_id="dds-sandboxforbidden", engine_version="5.0")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_validate_only_calls_nothing_upstream(stub, gateway_pb):
    resp = upgrade(stub, gateway_pb, db_instance_id="dds-sandbox03", engine_version="6.0", validate_only=True)
    assert resp.validate_only is True
    assert resp.alibaba_request_id == ""
    assert (resp.db_instance_id, resp.engine_version) == ("dds-sandbox03", "6.0")


def test_call_with_deadline_succeeds(stub, gateway_pb):
    # grpcio sends `grpc-timeout: 5S`-ish; the gateway must accept and honour it, not refuse it.
    req = gateway_pb.pb2.UpgradeEngineVersionRequest(
        db_instance_id="dds-sandboxsz", engine_version="7.0", region_id="cn-shenzhen"
    )
    resp = stub.UpgradeEngineVersion(req, timeout=5)
    assert resp.alibaba_request_id
    assert (resp.db_instance_id, resp.engine_version) == ("dds-sandboxsz", "7.0")


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_is_serving(channel, service):
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def reflect(channel, **request):
    """One v1alpha reflection round trip (the API is a bidirectional stream)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (resp,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=5)
    assert not resp.HasField("error_response"), resp.error_response
    return resp


def test_reflection_lists_services(channel):
    resp = reflect(channel, list_services="")
    names = {s.name for s in resp.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names, names


def test_reflection_serves_the_proto(channel):
    resp = reflect(channel, file_containing_symbol=SERVICE)
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in resp.file_descriptor_response.file_descriptor_proto]
    ours = [f for f in files if f.package == "dds.gateway.v1"]
    assert ours, [f.name for f in files]
    services = {s.name: s for f in ours for s in f.service}
    methods = {m.name: m for m in services["EngineVersionService"].method}
    assert list(methods) == ["UpgradeEngineVersion", "GetEngineVersion", "WatchUpgrade", "GetCaller", "ListEngineVersions", "ListActivity", "ListInstances"]
    assert methods["WatchUpgrade"].server_streaming and not methods["WatchUpgrade"].client_streaming
    assert not methods["UpgradeEngineVersion"].server_streaming


def test_get_engine_version(stub, gateway_pb):
    resp = stub.GetEngineVersion(gateway_pb.pb2.GetEngineVersionRequest(db_instance_id="dds-sandbox01"), timeout=10)
    assert (resp.status, resp.engine_version, resp.region_id) == ("Running", "4.2", "cn-hangzhou")
    assert list(resp.available_engine_versions)[:2] == ["4.4", "5.0"]


def test_watch_upgrade_streams_until_the_deadline(stub, gateway_pb):
    # Nothing upgrades dds-sandbox03 to 8.0: one message with its state, then the deadline.
    req = gateway_pb.pb2.WatchUpgradeRequest(db_instance_id="dds-sandbox03", engine_version="8.0")
    messages = []
    with pytest.raises(grpc.RpcError) as raised:
        for message in stub.WatchUpgrade(req, timeout=1.5):
            messages.append(message)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [(m.status, m.engine_version, m.done) for m in messages] == [("Running", "5.0", False)]
