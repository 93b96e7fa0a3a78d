"""The crate's layout (scripts/layout.py): no import cycle among the modules of src/, and every
stage folder importing only the stages below it. The checker is also run against layouts that
break each rule, so that it cannot pass by seeing nothing.
"""

import importlib.util
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("layout", REPO_ROOT / "scripts" / "layout.py")
layout = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(layout)


def problems(src: Path) -> list:
    return layout.violations(*layout.graph(str(src)))


def test_the_crate_has_no_cycle_and_imports_only_downward():
    assert problems(REPO_ROOT / "src") == []


def test_every_stage_folder_is_in_the_layers():
    stages = {p.name.removesuffix(".rs") for p in (REPO_ROOT / "src").iterdir()}
    stages -= {"lib", "main"}
    listed = set().union(*layout.LAYERS)
    assert stages == listed


def copy_of_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "src", src)
    return src


def test_a_parent_child_cycle_is_found(tmp_path):
    src = copy_of_src(tmp_path)
    # mod.rs re-exports the client; the client reaching back through the parent closes a cycle.
    client = src / "alibaba" / "client.rs"
    text = client.read_text()
    first_use = text.index("\nuse ")
    client.write_text(text[:first_use] + "\nuse super::Alibaba;" + text[first_use:])
    found = problems(src)
    assert any(p.startswith("import cycle:") and "alibaba::client" in p for p in found), found


def test_an_upward_import_is_found(tmp_path):
    src = copy_of_src(tmp_path)
    validation = src / "upgrade" / "validation.rs"
    text = validation.read_text()
    first_use = text.index("\nuse ")
    validation.write_text(
        text[:first_use] + "\nuse crate::api::service::SERVICE_NAME;" + text[first_use:]
    )
    found = problems(src)
    assert any(
        p.startswith("upward import: upgrade::validation -> api::service") for p in found
    ), found


def test_test_modules_may_import_upward(tmp_path):
    src = copy_of_src(tmp_path)
    # A test may drive its module with something from a higher stage (here the sandbox), as long
    # as no cycle closes.
    memory = src / "state" / "memory.rs"
    memory.write_text(
        memory.read_text() + "\n#[cfg(test)]\nmod more_tests {\n    use crate::sandbox::Sandbox;\n}\n"
    )
    assert problems(src) == []


def test_a_cycle_through_a_test_module_is_found(tmp_path):
    src = copy_of_src(tmp_path)
    # telemetry/mod.rs uses metrics; a metrics test reaching back into telemetry closes a cycle.
    metrics = src / "telemetry" / "metrics.rs"
    metrics.write_text(
        metrics.read_text()
        + "\n#[cfg(test)]\nmod more_tests {\n    use crate::telemetry::Telemetry;\n}\n"
    )
    found = problems(src)
    assert any(p.startswith("import cycle:") and "telemetry::metrics" in p for p in found), found
