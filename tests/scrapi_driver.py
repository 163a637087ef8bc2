"""Drives cxas-scrapi, unpatched, against whatever CES its environment points at (the emulator
in tests/test_scrapi.py). Runs in scrapi's own venv: no ces_nb import. Prints one JSON object:
for each feature, what came back (or the error it raised), for the test to check.

    python scrapi_driver.py APP_NAME            sessions, history, latency, tools, turn evals
    python scrapi_driver.py APP_NAME GOLDENS    the golden runner only
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
import uuid

APP = sys.argv[1]
GOLDENS = sys.argv[2] if len(sys.argv) > 2 else None
results: dict = {}
features: list = []


def feature(name, goldens=False):
    def wrap(fn):
        features.append((name, goldens, fn))
        return fn
    return wrap


def run_features() -> None:
    for name, goldens, fn in features:
        if goldens != bool(GOLDENS):
            continue
        try:
            results[name] = {"ok": True, "value": fn()}
        except BaseException as exc:  # noqa: BLE001 - every feature is reported, none stops the rest
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-3000:]}


session_id = f"scrapi-{uuid.uuid4().hex[:8]}"


@feature("sessions.run+parse_result")
def _():
    from cxas_scrapi.core.sessions import Sessions

    sessions = Sessions(app_name=APP)
    response = sessions.run(session_id=session_id, text=["What is the status of flight SW12?", "Thanks, that's all."])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sessions.parse_result(response)
    structured = sessions.get_structured_response(response)
    return {"printed": printed.getvalue(), "agent_text": structured["agent_text"],
            "tool_calls": [c["action"] for c in structured["tool_calls"]], "outputs": len(response.outputs)}


@feature("conversation_history")
def _():
    from cxas_scrapi.core.conversation_history import ConversationHistory

    history = ConversationHistory(app_name=APP)
    listed = [c.name for c in history.list_conversations(time_filter="1d")]
    conversation = history.get_conversation(session_id)
    exported = history.export_conversation_to_yaml(session_id)
    return {"listed": listed, "turns": len(conversation.turns), "yaml": exported}


@feature("latency_dfs")
def _():
    from cxas_scrapi.core.conversation_history import ConversationHistory

    frames = ConversationHistory(app_name=APP).get_latency_metrics_dfs(time_filter="1d", limit=20)
    return {name: {"rows": len(df), "columns": [str(c) for c in df.columns],
                   "records": json.loads(df.head(20).to_json(orient="records"))} for name, df in frames.items()}


@feature("tools")
def _():
    from cxas_scrapi.core.tools import Tools

    tools = Tools(app_name=APP)
    listed = [t.display_name for t in tools.list_tools()]
    executed = tools.execute_tool("get_flight_status", {"flight_number": "SW12"}, variables={})  # HTTPS :executeTool
    return {"listed": listed, "map": sorted(tools.get_tools_map(reverse=True)), "executed": executed}


@feature("tool_evals")
def _():
    from cxas_scrapi.evals.tool_evals import ToolEvals

    evals = ToolEvals(app_name=APP)
    cases = evals.load_tool_test_cases_from_yaml("""
tests:
  - name: sw12_is_delayed
    tool: get_flight_status
    args: {flight_number: SW12}
    expectations:
      response:
        - {path: $.flight_number, operator: equals, value: SW12}
        - {path: $.status, operator: contains, value: delayed}
  - name: a_wrong_gate_fails
    tool: get_flight_status
    args: {flight_number: SW12}
    expectations:
      response:
        - {path: $.gate, operator: equals, value: Z99}
""")
    with contextlib.redirect_stdout(io.StringIO()):
        frame = evals.run_tool_tests(cases)
    return json.loads(frame.to_json(orient="records"))


@feature("turn_evals")
def _():
    from cxas_scrapi.evals.turn_evals import TurnEvals

    evals = TurnEvals(app_name=APP)
    cases = evals.load_turn_test_cases_from_yaml("""
tests:
  - name: flight_status
    user: What is the status of flight SW12?
    expectations:
      - {type: contains, value: SW12}
      - {type: tool_called, value: get_flight_status}
      - {type: tool_input, value: {get_flight_status: {flight_number: SW12}}}
  - name: no_tools_for_a_greeting
    user: Hello
    expectations:
      - {type: no_tools_called}
  - name: a_failing_expectation_fails
    user: What is the status of flight SW12?
    expectations:
      - {type: contains, value: this text is nowhere}
""")
    with contextlib.redirect_stdout(io.StringIO()):
        frame = evals.run_turn_tests(cases)
    return json.loads(frame.to_json(orient="records"))


@feature("golden_runner", goldens=True)
def _():
    from cxas_scrapi.evals.runner import run_all_evals

    with contextlib.redirect_stdout(io.StringIO()):
        out = run_all_evals(app_name=APP, goldens_dir=GOLDENS, include=["goldens"])
    golden = out["golden"] if isinstance(out, dict) and "golden" in out else out
    return json.loads(json.dumps(golden, default=str))


run_features()
print(json.dumps(results, default=str))
