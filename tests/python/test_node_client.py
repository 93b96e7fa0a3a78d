"""The README's Node.js caller (tests/node/client.js: @grpc/grpc-js + @grpc/proto-loader with the
proto root in `includeDirs`) against the sandboxed gateway: a read, a validate-only upgrade, and
a bad request whose ErrorInfo reason and BadRequest field violations it decodes. Skipped only
where node is not installed; the packages come from tests/node/package-lock.json (`npm ci`, run
by scripts/test).
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("tests/node has no node_modules: run `npm ci --prefix tests/node`", pytrace=False)
    return found


def test_the_node_client_calls_the_gateway_and_reads_the_error_details(node, gateway):
    out = subprocess.run([node, str(NODE_DIR / "client.js"), gateway],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    read, validated, refused = [json.loads(line) for line in out.stdout.splitlines()]
    assert read["code"] == "OK", read
    assert read["response"]["engine_version"] == "4.2"
    assert read["response"]["status"] == "Running"
    assert validated["code"] == "OK", validated
    assert validated["response"]["validate_only"] is True
    assert validated["response"]["previous_engine_version"] == "4.2"
    assert refused["code"] == "INVALID_ARGUMENT", refused
    details = {d["type"]: d for d in refused["details"]}
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_REQUEST"
    fields = {v["field"] for v in details["google.rpc.BadRequest"]["fieldViolations"]}
    assert fields == {"db_instance_id", "engine_version"}


def test_without_the_proto_root_in_include_dirs_the_proto_does_not_load(node):
    # Why the README passes `includeDirs`: the import of google/api/annotations.proto fails.
    script = (
        "require('@grpc/proto-loader').loadSync(process.argv[1]);"
    )
    out = subprocess.run(
        [node, "-e", script, str(PROTO_ROOT / "dds/gateway/v1/gateway.proto")],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "google/api/annotations.proto" in out.stderr, out.stderr
