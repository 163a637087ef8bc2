"""Our own test exports (written in the shapes of the export reference, not SkyWay) hold the same
conversations over REST as over gRPC: each script's opening lines, sent through the official
client's REST transport and its gRPC transport, get the same agent text and the same tool calls."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

from ces_nb.emulator.export import load_export
from ces_nb.emulator.scripts import load_scripts
from emulator_process import EmulatorProcess

APPS = Path(__file__).parent / "apps"
EXPORTS = {  # app id -> export folder
    "acme-support": APPS / "cxas_project" / "cxas_app" / "Acme Support",
    "order-desk": APPS / "console_export",
    "ces-runtime": APPS / "ces_runtime",
}


@pytest.fixture(scope="module")
def both():
    args = [a for path in EXPORTS.values() for a in ("--app", str(path))]
    process = EmulatorProcess(*args, "--db", ":memory:", rest_port=0)
    channel = grpc.insecure_channel(process.address)
    over_grpc = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    over_rest = ces_v1.SessionServiceClient(transport="rest", client_options={"api_endpoint": process.rest_url},
                                            credentials=AnonymousCredentials())
    yield over_grpc, over_rest
    channel.close()
    process.stop()


def _opening_lines(path: Path) -> list[str]:
    """The first two user lines of each of the app's scripts."""
    lines = []
    for script in load_scripts(load_export(str(path))):
        lines += [t.user for t in script.turns if t.user.strip()][:2]
    return lines


def _turn(client, name: str, text: str) -> tuple[str, list[str]]:
    outputs = client.run_session(request={"config": {"session": name}, "inputs": [{"text": text}]}).outputs
    said = " ".join(o.text for o in outputs if o.text)
    calls = [c.tool_call.display_name for m in outputs[-1].diagnostic_info.messages for c in m.chunks
             if ces_v1.Chunk.pb(c).HasField("tool_call")]
    return said, calls


@pytest.mark.parametrize("app", sorted(EXPORTS))
def test_an_exports_conversations_are_the_same_over_rest_and_grpc(both, app):
    over_grpc, over_rest = both
    lines = _opening_lines(EXPORTS[app])
    assert len(lines) >= 2, f"{app} has too few scripts to converse with"
    names = {k: f"projects/p/locations/us/apps/{app}/sessions/{k}-{uuid.uuid4().hex[:8]}" for k in ("grpc", "rest")}
    for line in lines:
        got_grpc = _turn(over_grpc, names["grpc"], line)
        got_rest = _turn(over_rest, names["rest"], line)
        assert got_rest == got_grpc, line
        assert got_grpc[0] or got_grpc[1], f"{app}: no answer to {line!r}"
        assert "no script for that message" not in got_grpc[0], f"{app}: {line!r} matched no script"
