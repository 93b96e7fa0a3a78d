"""Shared fixtures of the Python interoperability tests: the Rust binaries, a running sandboxed
gateway and Python stubs generated from the gateway's proto with `grpc_tools.protoc`.

The binaries are built by cargo beforehand (`cargo build --bin dds-gateway --example sign`); the
tests never build anything themselves.
"""

import contextlib
import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
GATEWAY_PROTO = "dds/gateway/v1/gateway.proto"
ROLLOUT_PROTO = "dds/gateway/v1/rollout.proto"

# The gateway's log line once it accepts calls (JSON by default), e.g.
# `{"level":"INFO","local":"127.0.0.1:40289","message":"dds-gateway listening",...}`.
# (An earlier WARN line also carries `local`, so match the message too.)
LISTENING_MESSAGE = '"message":"dds-gateway listening"'


def _listening_address(line: str):
    """The address of the "listening" log line, or None for any other line."""
    if LISTENING_MESSAGE not in line:
        return None
    try:
        return json.loads(line).get("local")
    except ValueError:
        return None
STARTUP_DEADLINE_S = 20
SHUTDOWN_DEADLINE_S = 15


def _binary(env_var: str, default: str) -> Path:
    path = Path(os.environ.get(env_var) or REPO_ROOT / default)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{path} is missing: run `cargo build --bin dds-gateway --example sign` first "
            f"(or point {env_var} at the binary)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def sign_bin() -> Path:
    """The `sign` example: JSON cases on stdin, the signer's stages on stdout."""
    return _binary("DDS_GATEWAY_SIGN_BIN", "target/debug/examples/sign")


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    return _binary("DDS_GATEWAY_BIN", "target/debug/dds-gateway")


@pytest.fixture(scope="session")
def gateway_pb(tmp_path_factory) -> types.SimpleNamespace:
    """`gateway_pb2` and `gateway_pb2_grpc` (and `rollout_pb2`, `rollout_pb2_grpc` as `rollout_pb2`
    and `rollout_grpc`), generated now from the repository's protos, so the tests exercise the
    protos as they are rather than checked-in stubs."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    well_known = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        GATEWAY_PROTO,
        ROLLOUT_PROTO,
    ])
    assert rc == 0, f"protoc failed on {GATEWAY_PROTO} and {ROLLOUT_PROTO} (exit {rc})"
    sys.path.insert(0, str(out))
    try:
        return types.SimpleNamespace(
            pb2=importlib.import_module("dds.gateway.v1.gateway_pb2"),
            grpc=importlib.import_module("dds.gateway.v1.gateway_pb2_grpc"),
            rollout_pb2=importlib.import_module("dds.gateway.v1.rollout_pb2"),
            rollout_grpc=importlib.import_module("dds.gateway.v1.rollout_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@contextlib.contextmanager
def running_gateway(gateway_bin, *args):
    """Runs `dds-gateway serve --sandbox ARGS` on an ephemeral loopback port; yields its address.

    On exit sends SIGTERM and requires a graceful exit with status 0.
    """
    proc = subprocess.Popen(
        [str(gateway_bin), "serve", "--sandbox", "--listen", "127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RUST_LOG": "info"},
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    log: list[str] = []
    address: queue.Queue = queue.Queue()

    # Reads stderr for the whole life of the process, so the pipe never fills and blocks the
    # gateway; reports the listening address, or None at EOF (the process died first).
    def drain():
        for line in proc.stderr:
            log.append(line)
            if local := _listening_address(line):
                address.put(local)
        address.put(None)

    reader = threading.Thread(target=drain, name="gateway-stderr", daemon=True)
    reader.start()
    try:
        try:
            local = address.get(timeout=STARTUP_DEADLINE_S)
        except queue.Empty:
            local = None
        if local is None:
            pytest.fail(
                f"gateway did not report listening within {STARTUP_DEADLINE_S}s "
                f"(exit status {proc.poll()}); stderr:\n{''.join(log)}",
                pytrace=False,
            )
        yield local

        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=SHUTDOWN_DEADLINE_S)
        reader.join(timeout=5)
        assert rc == 0, f"gateway exited with {rc} after SIGTERM; stderr:\n{''.join(log)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def gateway(gateway_bin):
    """`dds-gateway serve --sandbox` on an ephemeral loopback port (see `running_gateway`)."""
    with running_gateway(gateway_bin) as local:
        yield local


@pytest.fixture(scope="module")
def channel(gateway):
    with grpc.insecure_channel(gateway) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch
