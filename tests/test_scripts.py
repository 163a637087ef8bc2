"""Where the playback model's scripts come from besides examples/: goldens (cxas-scrapi YAML,
found beside cxas_app/), few-shot blocks in instructions, CES Evaluation goldens and ces_nb
transcripts (`--examples`). Conversations run through the official client against a real
emulator serving tests/apps/cxas_project/cxas_app/Acme Support, an export with no examples/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.adk.examples.example import Example
from google.adk.examples.example_util import convert_examples_to_text
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.genai import types

from ces_nb.emulator.export import load_export
from ces_nb.emulator.playback import compile_example
from ces_nb.emulator.scripts import _Names, few_shot_scripts, load_scripts, plain
from ces_nb.emulator.server import demo_app_path

from emulator_process import EmulatorProcess

APPS = Path(__file__).parent / "apps"
ACME = APPS / "cxas_project" / "cxas_app" / "Acme Support"
RECORDINGS = APPS / "acme_recordings"
APP = "projects/test-project/locations/us/apps/acme-support"
NO_SCRIPT = "the emulator has no script for that message"


# -- reading ----------------------------------------------------------------------------------

def steps(script):
    """A script as plain data: [(user, [[(kind, text or name, data, agent)]])]."""
    return [(t.user, [[(s.kind, s.text or s.name, s.data, s.agent) for s in g] for g in t.groups]) for t in script.turns]


def test_the_demo_plays_its_examples_and_nothing_else():
    app = load_export(str(demo_app_path()))
    scripts = load_scripts(app)
    assert [steps(s) for s in scripts] == [steps(compile_example(e, app.app.root_agent)) for e in app.examples]
    assert [s.source for s in scripts] == [f"examples/{e.display_name}" for e in app.examples]
    assert app.script_sources == [] and app.skipped == []


def test_goldens_are_found_beside_cxas_app_only(tmp_path):
    assert load_export(str(ACME)).script_sources == [str((APPS / "cxas_project" / "evals" / "goldens").resolve())]
    elsewhere = tmp_path / "Acme Support"
    shutil.copytree(ACME, elsewhere)
    assert load_export(str(elsewhere)).script_sources == []


def test_each_script_says_where_it_came_from():
    app = load_export(str(ACME))
    app.script_sources.append(str(RECORDINGS))
    sources = [s.source for s in load_scripts(app)]
    assert "evals/goldens/orders.yaml#conversations[0]" in sources
    assert "evals/goldens/returns.yaml#conversations[0]" in sources
    assert "instruction of agent 'Acme Support'#examples[1]" in sources
    assert "instruction of agent 'Returns Agent'#examples[0]" in sources
    assert f"{RECORDINGS}/refund_status.evaluation.json" in sources
    assert f"{RECORDINGS}/cancel_then_return.transcript.json" in sources
    assert app.skipped == []


def test_match_type_markers_play_their_plain_value():
    assert plain({
        "a": {"value": "ORD-1", "$matchType": "contains"},
        "b": {"$matchType": "semantic", "$matchValue": "a reason", "$originalValue": ""},
        "c": {"$matchType": "ignore", "$matchValue": "", "$originalValue": "recorded"},
        "d": {"$matchType": "ignore", "$matchValue": "", "$originalValue": ""},
        "e": [{"$matchType": "regexp", "$matchValue": "^x+$", "$originalValue": "xx"}],
        "f": {"nested": 1},
    }) == {"a": "ORD-1", "b": "a reason", "c": "recorded", "d": "", "e": ["xx"], "f": {"nested": 1}}


@pytest.mark.parametrize("model", [None, "claude-3-7-sonnet"])  # gemini: plain ``` fences; others: tool_code / tool_outputs
def test_few_shots_as_adk_writes_them(model):
    example = Example(
        input=types.Content(role="user", parts=[types.Part(text="Is there an outage in 94107?")]),
        output=[
            types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="check_outage", args={"zip_code": "94107"}))]),
            types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(name="check_outage", response={"outage": True}))]),
            types.Content(role="model", parts=[types.Part(text="Yes, service is back by 18:00.")]),
        ],
    )
    instruction = "You help with outages.\n\n" + convert_examples_to_text([example], model)
    app = load_export(str(ACME))
    notes: list[str] = []
    [script] = few_shot_scripts(instruction, "Acme Support", "here", _Names(app), notes)
    assert steps(script) == [("Is there an outage in 94107?", [
        [("call", "check_outage", {"zip_code": "94107"}, "Acme Support")],
        [("text", "Yes, service is back by 18:00.", None, "Acme Support")],
    ])]
    assert notes == []


def test_hand_written_few_shots_and_instructions_without_any():
    app = load_export(str(ACME))
    names = _Names(app)
    instruction = """<role>Help.</role>
<examples>
  <example>
    User: where is order A1?
    Agent: Let me look.
    ```tool_code
    print(default_api.lookup_order(order_id="A1"))
    ```
    ```tool_outputs
    {'status': 'shipped'}
    ```
    Agent: It has shipped.
  </example>
  <example>
    **Customer:** I want to return a lamp
    **Agent:** Passing you over.
    ```
    transfer_to_agent(agent_name='Returns_Agent')
    ```
  </example>
</examples>"""
    first, second = few_shot_scripts(instruction, "Acme Support", "here", names, [])
    assert steps(first) == [("where is order A1?", [
        [("text", "Let me look.", None, "Acme Support"), ("call", "lookup_order", {"order_id": "A1"}, "Acme Support")],
        [("text", "It has shipped.", None, "Acme Support")],
    ])]
    assert steps(second) == [("I want to return a lamp", [
        [("text", "Passing you over.", None, "Acme Support"), ("transfer", "Returns Agent", None, "Acme Support")],
    ])]
    assert few_shot_scripts("<role>\nUser: must be polite.\n</role>", "Acme Support", "here", names, []) == []


def test_what_cannot_play_is_reported_and_the_rest_plays(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "conversations:\n"
        "  - conversation: teleport\n"
        "    turns:\n"
        "      - user: beam me up\n"
        "        agent: Energizing.\n"
        "        tool_calls: [{action: teleport, args: {to: ship}}]\n")
    (tmp_path / "b.yaml").write_text("tests:\n  - name: a tool test, not a golden\n")
    (tmp_path / "c.yaml").write_text("conversations: [unclosed\n")
    app = load_export(str(ACME))
    app.script_sources = [str(tmp_path)]
    scripts = load_scripts(app)
    [teleport] = [s for s in scripts if s.name == "teleport"]
    assert steps(teleport) == [("beam me up", [[("text", "Energizing.", None, "Acme Support")]])]
    for where, words in ((f"{tmp_path}/a.yaml#conversations[0].turns[0].tool_calls[0]", "'teleport' is not a tool of any agent"),
                         (f"{tmp_path}/b.yaml", "not a golden"), (f"{tmp_path}/c.yaml", "not valid YAML")):
        assert any(n.startswith(where) and words in n for n in app.app.validation_errors), (where, app.app.validation_errors)
    load_scripts(app)  # a second runtime (the warm-up's) notes nothing twice
    assert len(app.skipped) == 3


def test_a_cxas_exported_evaluation_reads_as_a_golden(tmp_path):
    (tmp_path / "e.yaml").write_text(
        "displayName: Outage check\n"
        "golden:\n"
        "  turns:\n"
        "  - steps:\n"
        "    - userInput: {event: {event: welcome}}\n"
        "    - expectation: {agentResponse: {role: agent, chunks: [{text: Hello from Acme.}]}}\n"
        "  - steps:\n"
        "    - user_input: {text: any outage at 30301}\n"
        "    - expectation: {tool_call: {tool: check_outage, args: {zip_code: '30301'}}}\n"
        "    - expectation: {mock_tool_response: {tool: check_outage, response: {outage: false}}}\n"
        "    - expectation: {agent_transfer: {target_agent: projects/p/locations/l/apps/a/agents/8b71d0c3-2f4e-4a9b-b6d5-0c3e7a1f9e22}}\n")
    app = load_export(str(ACME))
    app.script_sources = [str(tmp_path / "e.yaml")]
    [script] = [s for s in load_scripts(app) if s.name == "Outage check"]
    assert steps(script) == [
        ("event: welcome", [[("text", "Hello from Acme.", None, "Acme Support")]]),
        ("any outage at 30301", [[("call", "check_outage", {"zip_code": "30301"}, "Acme Support")],
                                 [("transfer", "Returns Agent", None, "Acme Support")]]),
    ]


# -- playing, through the official client -----------------------------------------------------

@pytest.fixture(scope="module")
def acme():
    process = EmulatorProcess("--app", str(ACME), "--db", ":memory:", "--examples", str(RECORDINGS))
    channel = grpc.insecure_channel(process.address)
    yield ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
    channel.close()
    process.stop()


_n = iter(range(1, 10_000))


def session() -> str:
    return f"{APP}/sessions/scripts-{next(_n)}"


def run(client, name, *inputs):
    items = [i if isinstance(i, ces_v1.SessionInput) else ces_v1.SessionInput(text=i) for i in inputs]
    return list(client.run_session(request={"config": {"session": name}, "inputs": items}).outputs)


def kind(output):
    return ces_v1.SessionOutput.pb(output).WhichOneof("output_type")


def text(outputs) -> str:
    return " ".join(o.text for o in outputs if kind(o) == "text")


def client_calls(outputs) -> list[tuple[str, dict]]:
    return [(c.display_name, dict(c.args)) for o in outputs if kind(o) == "tool_calls" for c in o.tool_calls.tool_calls]


def agent_steps(outputs) -> list[tuple]:
    """Tool calls (server side too) and transfers, from the turn's diagnostic messages."""
    found = []
    for message in outputs[-1].diagnostic_info.messages:
        for chunk in message.chunks:
            k = ces_v1.Chunk.pb(chunk).WhichOneof("data")
            if k == "tool_call":
                found.append(("call", chunk.tool_call.display_name, dict(chunk.tool_call.args)))
            elif k == "agent_transfer":
                found.append(("transfer", chunk.agent_transfer.target_agent))
    return found


def answer(client, name, outputs, response):
    [call] = [c for o in outputs if kind(o) == "tool_calls" for c in o.tool_calls.tool_calls]
    reply = ces_v1.SessionInput(tool_responses={"tool_responses": [{"id": call.id, "response": response}]})
    return run(client, name, reply)


def test_golden_plays_turn_by_turn(acme):
    name = session()
    assert text(run(acme, name, ces_v1.SessionInput(event={"event": "welcome"}))) == "Hi, this is Acme Support. How can I help you today?"
    out = run(acme, name, "Where is my order Z9876?")
    assert agent_steps(out) == [("call", "lookup_order", {"order_id": "Z9876"})]  # the golden's A1234, as the user said it
    assert text(out) == "Your order has shipped and should arrive by 2026-04-18."
    out = run(acme, name, "Thanks, that's all.")
    assert text(out) == "You're welcome. Goodbye!"
    assert agent_steps(out) == [("call", "end_session", {"reason": "customer is done"})]  # $originalValue, $matchType: ignore
    assert "end_session" in [kind(o) for o in out]


def test_golden_across_agents_with_a_client_function(acme):
    name = session()
    out = run(acme, name, "I want to return my toaster")
    assert text(out) == "Let me connect you with our returns specialist."
    assert agent_steps(out) == [("transfer", "Returns Agent"), ("call", "start_return", {"item": "toaster"})]
    assert client_calls(out) == [("start_return", {"item": "toaster"})]
    assert text(answer(acme, name, out, {"reference": "RMA-1"})) == "Your return RMA-2291 is booked. Print the label from your email."


def test_few_shots_in_instructions_play(acme):
    out = run(acme, session(), "Is there an outage in 95014?")
    assert agent_steps(out) == [("call", "check_outage", {"zip_code": "95014"})]
    assert text(out) == "Yes, there is an outage in your area. Our crews expect service back by 18:00."
    out = run(acme, session(), "How long do refunds take?")  # the returns agent's few-shot: handed over first
    assert agent_steps(out) == [("transfer", "Returns Agent")]
    assert text(out) == "Refunds reach your card within 5 business days of us receiving the item."


def test_a_transcript_recorded_on_ces_replays_offline(acme):
    name = session()
    out = run(acme, name, "Please cancel order C555")
    assert agent_steps(out) == [("call", "lookup_order", {"order_id": "C555"})]  # recorded by resource name (a UUID)
    assert text(out) == "Order C555 has already shipped, so it can't be cancelled. You can return it once it arrives."
    out = run(acme, name, "Then I'd like to return order D777 instead")
    assert text(out) == "I'll pass you to our returns team."
    assert agent_steps(out) == [("transfer", "Returns Agent"), ("call", "start_return", {"item": "D777"})]
    assert text(answer(acme, name, out, {"reference": "RMA-9"})) == "Your return is booked. The label is on its way to your email."


def test_a_ces_evaluation_golden_plays(acme):
    out = run(acme, session(), "Has my refund for order B7 been processed?")
    assert agent_steps(out) == [("call", "lookup_order", {"order_id": "B7"})]
    assert text(out) == "Your refund for order B7 was issued on 2026-03-02."


def test_an_unmatched_message_gets_the_no_script_answer(acme):
    reply = text(run(acme, session(), "qwxz vlorp"))
    assert NO_SCRIPT in reply and "evals/goldens" in reply and "--examples" in reply
    app = load_export(str(ACME))
    lines = [ln.strip() for a in app.agents.values() for ln in a.instruction.splitlines() if len(ln.strip()) >= 8]
    assert not [ln for ln in lines if ln in reply]
    assert "<role>" not in reply and "<!--" not in reply


def test_examples_that_are_not_there_stop_the_cli(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--examples", str(tmp_path / "nope.yaml"), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"--examples {tmp_path / 'nope.yaml'}: no such file or folder" in done.stderr


def test_recordings_are_what_they_claim():
    # The fixtures themselves: a transcript ces_nb loads strictly, an evaluation in CES's JSON.
    from ces_nb.model import Transcript

    assert len(Transcript.load(RECORDINGS / "cancel_then_return.transcript.json", strict=True)) == 3
    from google.cloud import ces_v1beta
    from google.protobuf import json_format

    data = json.loads((RECORDINGS / "refund_status.evaluation.json").read_text())
    json_format.ParseDict(data, ces_v1beta.Evaluation.pb()())  # no unknown fields
