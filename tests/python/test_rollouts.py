"""A fleet rollout driven by a Python grpcio client built from rollout.proto, against
`dds-gateway serve --sandbox` with a small generated fleet whose upgrades take a second: plan,
a refused start whose plan hash no longer matches, start with a canary and an approval gate,
approve, watch (a server stream) to the end."""

import grpc
import pytest

from conftest import running_gateway

FLEET = """
[sandbox.fleet]
count = 4
engine_versions = ["4.4"]
regions = ["cn-hangzhou"]
upgrade_time = "1s"
"""


@pytest.fixture(scope="module")
def rollouts(gateway_bin, gateway_pb, tmp_path_factory):
    config = tmp_path_factory.mktemp("rollouts") / "gateway.toml"
    config.write_text(FLEET)
    with running_gateway(gateway_bin, "--config", str(config)) as local:
        with grpc.insecure_channel(local) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            yield gateway_pb.rollout_grpc.RolloutServiceStub(ch)


def selector(pb2):
    return pb2.Selector(instance_patterns=["dds-fleet*"])


def test_plan_start_approve_and_watch_a_rollout(rollouts, gateway_pb):
    pb2 = gateway_pb.rollout_pb2
    plan = rollouts.PlanRollout(
        pb2.PlanRolloutRequest(selector=selector(pb2), target_engine_version="5.0"), timeout=30
    )
    assert len(plan.eligible) == 4, plan
    assert len(plan.plan_hash) == 64

    with pytest.raises(grpc.RpcError) as refused:
        rollouts.StartRollout(
            pb2.StartRolloutRequest(
                plan_hash="0" * 64, selector=selector(pb2), target_engine_version="5.0"
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    rollout = rollouts.StartRollout(
        pb2.StartRolloutRequest(
            plan_hash=plan.plan_hash,
            selector=selector(pb2),
            target_engine_version="5.0",
            waves=[pb2.WaveSpec(size=1), pb2.WaveSpec(percent=100)],
            max_parallel_percent=50,
            approval_required=True,
            comment="from python",
        ),
        timeout=30,
    )
    assert rollout.state == pb2.ROLLOUT_STATE_RUNNING
    assert [w.size for w in rollout.waves] == [1, 3]
    assert rollout.waves[1].max_parallel == 2

    states = []
    approved = None
    for change in rollouts.WatchRollout(
        pb2.WatchRolloutRequest(rollout_id=rollout.rollout_id), timeout=120
    ):
        states.append(change.state)
        if approved is None and change.waves[1].state == pb2.WAVE_STATE_WAITING_APPROVAL:
            approved = rollouts.ApproveRollout(
                pb2.RolloutControlRequest(rollout_id=rollout.rollout_id, comment="canary ok"),
                timeout=30,
            )
            assert approved.waves[1].approval_comment == "canary ok"
    assert states[-1] == pb2.ROLLOUT_STATE_COMPLETED
    assert pb2.ROLLOUT_STATE_WAITING in states
    done = rollouts.GetRollout(pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=30)
    assert all(i.state == pb2.INSTANCE_STATE_DONE for i in done.instances)
