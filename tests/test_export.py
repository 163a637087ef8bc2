"""Loading CES app exports: the demo, zips, and malformed exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ces_nb.emulator.export import ExportError, load_export
from ces_nb.emulator.server import demo_app_path

from conftest import EmulatorProcess


@pytest.fixture
def export(tmp_path) -> Path:
    target = tmp_path / "skyway"
    shutil.copytree(demo_app_path(), target)
    return target


def test_demo_app_covers_every_feature():
    app = load_export(str(demo_app_path()))
    assert app.skipped == []
    kinds = {app.tool_kind(t) for t in app.tools.values()}
    assert {"client_function", "python_function", "data_store_tool", "google_search_tool"} <= kinds
    assert len(app.examples) >= 8
    assert app.root_agent.child_agents == ["Booking Agent"]
    assert len(app.documents["search_policies"]) >= 5
    chunk_kinds = {type_ for e in app.examples for m in e.messages for c in m.chunks
                   for type_ in [type(c).pb(c).WhichOneof("data")]}
    assert {"text", "tool_call", "tool_response", "agent_transfer", "payload"} <= chunk_kinds


def test_zip_export_with_root_folder(export, tmp_path):
    archive = tmp_path / "skyway.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in export.rglob("*"):
            if path.is_file():
                zf.write(path, "skyway/" + path.relative_to(export).as_posix())
    app = load_export(str(archive))
    assert app.app_id == "skyway" and set(app.agents) == {"SkyWay Concierge", "Booking Agent"}
    assert "instruction.txt" not in app.root_agent.instruction and "concierge" in app.root_agent.instruction


def test_json_and_yaml_load_the_same(export):
    import yaml

    yml = export / "agents/skyway_concierge/skyway_concierge.yaml"
    data = yaml.safe_load(yml.read_text())
    yml.unlink()
    (export / "agents/skyway_concierge/skyway_concierge.json").write_text(json.dumps(data))
    assert load_export(str(export)).root_agent == load_export(str(demo_app_path())).root_agent


def test_missing_app_file_is_fatal_and_named(export):
    (export / "app.yaml").unlink()
    with pytest.raises(ExportError, match="no app.yaml or app.json"):
        load_export(str(export))


def test_invalid_app_file_is_fatal_and_named(export):
    (export / "app.yaml").write_text("displayName: [unclosed\n")
    with pytest.raises(ExportError, match="app.yaml: not valid YAML"):
        load_export(str(export))


def test_missing_root_agent_is_fatal_and_named(export):
    shutil.rmtree(export / "agents/skyway_concierge")
    with pytest.raises(ExportError, match="rootAgent 'SkyWay Concierge' names no agent"):
        load_export(str(export))


def test_dangling_references_are_skipped_and_reported(export):
    path = export / "agents/booking_agent/booking_agent.json"
    data = json.loads(path.read_text())
    data["tools"].append("teleport")
    path.write_text(json.dumps(data))
    (export / "tools/legacy_api").mkdir()
    (export / "tools/legacy_api/legacy_api.json").write_text(json.dumps(
        {"displayName": "legacy_api", "openApiTool": {"name": "legacy", "openApiSchema": "openapi: 3.0.0"}}))
    app = load_export(str(export))
    assert "teleport" not in app.agents["Booking Agent"].tools
    assert any("'teleport' is not defined" in s for s in app.skipped)
    assert any("openApiTool is not supported offline" in s for s in app.skipped)
    assert any("teleport" in e for e in app.app.validation_errors)


def test_cli_refuses_a_malformed_export_with_the_file_name(export):
    shutil.rmtree(export / "agents/skyway_concierge")
    done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--app", str(export), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "app.yaml: rootAgent" in done.stderr


def test_partial_export_still_serves_and_reports_through_get_app(export):
    import grpc
    from google.cloud import ces_v1
    from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport

    (export / "tools/legacy_api").mkdir()
    (export / "tools/legacy_api/legacy_api.json").write_text(json.dumps({"displayName": "legacy_api", "mcpTool": {"name": "x"}}))
    process = EmulatorProcess("--app", str(export), "--db", ":memory:")
    try:
        channel = grpc.insecure_channel(process.address)
        agents = ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel))
        app = agents.get_app(name="projects/p/locations/us/apps/skyway")
        assert any("mcpTool is not supported offline" in e for e in app.validation_errors)
        channel.close()
    finally:
        process.stop()
