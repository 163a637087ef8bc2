"""What CES callbacks and a guardrail cost a turn: the demo app as it ships, against the same app
with four callbacks (before/after agent, before/after model, each running in the sandboxed
python worker and returning None) and a keyword guardrail on its root agent. The same 10-turn
conversation (emulator_turns.SCRIPT) through the official client over gRPC, one emulator each
on a SQLite file store (the default kind), rounds interleaved; round 0 warms up.

    python benchmarks/callbacks.py [--rounds 20]      goal: <= 1.5x per turn
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
import yaml
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from emulator_process import EmulatorProcess  # noqa: E402
from rest_vs_grpc import one_round  # noqa: E402  (the same 10-turn round, timed per turn)

from ces_nb.emulator.server import demo_app_path  # noqa: E402

ROOT_AGENT = "agents/skyway_concierge/skyway_concierge.yaml"
CALLBACKS = {  # CES's names and arguments; each one reads and returns nothing, as a logging callback would
    "beforeAgentCallbacks": "def before_agent_callback(callback_context):\n    callback_context.state.get('tier')\n",
    "afterAgentCallbacks": "def after_agent_callback(callback_context):\n    callback_context.state.get('tier')\n",
    "beforeModelCallbacks": "def before_model_callback(callback_context, llm_request):\n    return None\n",
    "afterModelCallbacks": "def after_model_callback(callback_context, llm_response):\n    llm_response.text_or_transcript()\n",
}
GUARDRAIL = {
    "displayName": "no_competitors",
    "enabled": True,
    "contentFilter": {"bannedContents": ["AcmeAir"], "matchType": "WORD_BOUNDARY_STRING_MATCH"},
    "action": {"respondImmediately": {"responses": [{"text": "Let's talk about our own flights."}]}},
}


def app_with_callbacks(folder: Path) -> Path:
    """The demo export, plus the callbacks and the guardrail on its root agent."""
    app = folder / "skyway"
    shutil.copytree(demo_app_path(), app)
    agent = yaml.safe_load((app / ROOT_AGENT).read_text())
    for key, code in CALLBACKS.items():
        path = f"agents/skyway_concierge/{key}/python_code.py"
        (app / path).parent.mkdir(parents=True)
        (app / path).write_text(code)
        agent[key] = [{"pythonCode": path}]
    agent["guardrails"] = ["no_competitors"]
    (app / ROOT_AGENT).write_text(yaml.safe_dump(agent, sort_keys=False))
    (app / "guardrails/no_competitors").mkdir(parents=True)
    (app / "guardrails/no_competitors/no_competitors.yaml").write_text(yaml.safe_dump(GUARDRAIL, sort_keys=False))
    return app


def _span_names(span) -> list[str]:
    return [span.name, *(n for child in span.child_spans for n in _span_names(child))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ces-nb-callbacks-"))
    plain = EmulatorProcess("--db", str(folder / "plain.db"))
    hooked = EmulatorProcess("--app", str(app_with_callbacks(folder)), "--db", str(folder / "hooked.db"))
    try:
        clients = {label: ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=grpc.insecure_channel(server.address)))
                   for label, server in (("plain", plain), ("callbacks", hooked))}
        check = clients["callbacks"].run_session(request={"config": {"session": "projects/b/locations/us/apps/skyway/sessions/check"},
                                                           "inputs": [{"text": "Hello"}]})
        kinds = _span_names(check.outputs[-1].diagnostic_info.root_span)
        assert kinds.count("Callback") >= 4 and "Guardrail" in kinds, f"the callbacks didn't run: {kinds}"
        times: dict[str, list[float]] = {label: [] for label in clients}
        for r in range(args.rounds + 1):
            for label, client in clients.items():
                got = one_round(client, label)
                if r:
                    times[label] += got
        p50 = {k: statistics.median(v) for k, v in times.items()}
        mean = {k: statistics.fmean(v) for k, v in times.items()}
        print(f"callbacks: the demo's 10-turn conversation, {args.rounds} rounds each, interleaved, SQLite file stores")
        for label in times:
            print(f"  {label:9s}  p50 {p50[label] * 1000:6.2f} ms  mean {mean[label] * 1000:6.2f} ms  ({len(times[label])} turns)")
        print(f"  4 callbacks + a guardrail vs none: p50 {p50['callbacks'] / p50['plain']:.2f}x  "
              f"mean {mean['callbacks'] / mean['plain']:.2f}x   (goal: <= 1.5x)")
    finally:
        plain.stop()
        hooked.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
