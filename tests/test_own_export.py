"""An export we wrote ourselves, from the CES "Export format reference", run as a new user
would (issue 12): tests/apps/bookshop is a `cxas pull` project (`cxas_app/Bookshop` with
`evals/goldens/`), in YAML and JSON, with no `examples/`; tests/apps/bookshop_console is the
same app as a console export (UUID-named folders), whose only script is a few-shot block.

The Bookshop has a python tool using `context` and `tools.<name>()` (another python tool, and
an OpenAPI toolset's tool), every callback kind (one disabled, one with
proactiveExecutionEnabled), a code-callback and a keyword guardrail, an OpenAPI toolset with
fake code, an MCP toolset without, `environment.json` for their `$env_var`s, a widget tool, a
transfer rule, and a recorded CES Evaluation passed with `--examples`.

Every conversation runs through the official client, over gRPC and over REST."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import ces_v1
from google.cloud.ces_v1.services.agent_service.transports import AgentServiceGrpcTransport
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport
from google.cloud.ces_v1.services.tool_service.transports import ToolServiceGrpcTransport
from google.protobuf import json_format

from conftest import EmulatorProcess

APPS = Path(__file__).parent / "apps"
PROJECT = APPS / "bookshop"
APP_DIR = PROJECT / "cxas_app" / "Bookshop"
CONSOLE_DIR = APPS / "bookshop_console"
EVALUATION = PROJECT / "recorded" / "reserve_evaluation.json"
APP = "projects/p/locations/us/apps/bookshop"
CONSOLE = "projects/p/locations/us/apps/bookshop-console"
NO_SCRIPT = "the emulator has no script for that message"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def emulator():
    process = EmulatorProcess("--app", str(APP_DIR), "--app", str(CONSOLE_DIR), "--examples", str(EVALUATION),
                              "--db", ":memory:", rest_port=0)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(emulator):
    ch = grpc.insecure_channel(emulator.address)
    yield ch
    ch.close()


def _rest(emulator) -> dict:
    return dict(transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator.rest_url})


@pytest.fixture(scope="module", params=["grpc", "rest"])
def clients(request, emulator, channel):
    """(sessions, agents, tools), over the binding the test is parametrized with."""
    if request.param == "grpc":
        return (ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel)),
                ces_v1.AgentServiceClient(transport=AgentServiceGrpcTransport(channel=channel)),
                ces_v1.ToolServiceClient(transport=ToolServiceGrpcTransport(channel=channel)))
    kw = _rest(emulator)
    return ces_v1.SessionServiceClient(**kw), ces_v1.AgentServiceClient(**kw), ces_v1.ToolServiceClient(**kw)


class Conversation:
    """One session of `app`: say(text) runs a turn and returns a Turn."""

    def __init__(self, sessions, app: str = APP, **config):
        self.sessions, self.config = sessions, {"session": f"{app}/sessions/own-{next(_ids)}", **config}

    def say(self, text: str, variables: dict | None = None) -> "Turn":
        inputs = [{"text": text}] + ([{"variables": variables}] if variables else [])
        return Turn(self.sessions.run_session(request={"config": self.config, "inputs": inputs}).outputs)


class Turn:
    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.root = self.outputs[-1].diagnostic_info.root_span
        self.messages = self.outputs[-1].diagnostic_info.messages

    @property
    def text(self) -> str:
        return " ".join(o.text for o in self.outputs if o.text)

    def chunks(self, kind: str) -> list[dict]:
        return [json_format.MessageToDict(getattr(ces_v1.Chunk.pb(c), kind)) for m in self.messages for c in m.chunks
                if ces_v1.Chunk.pb(c).WhichOneof("data") == kind]

    def tool_response(self, tool: str) -> dict:
        found = [c["response"] for c in self.chunks("tool_response") if c.get("displayName") == tool or c.get("tool", "").endswith("/" + tool)]
        assert found, f"no response of {tool}: {self.chunks('tool_response')}"
        return found[0]

    def spans(self, name: str) -> list[dict]:
        found = []

        def walk(span, parent):
            if span.name == name:
                found.append({**json_format.MessageToDict(ces_v1.Span.pb(span).attributes), "_parent": parent})
            for child in span.child_spans:
                walk(child, span.name)

        walk(self.root, "")
        return found


# --- the load report -----------------------------------------------------------------------

def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ces_nb", "emulator", "--check", *args],
                          capture_output=True, text=True, timeout=60)


def test_check_accounts_for_every_file_and_key_and_says_where_the_scripts_come_from():
    done = _check("--app", str(APP_DIR))
    assert done.returncode == 0, done.stderr
    report = done.stdout
    assert "NOTES.md\n    ignored:" in report  # a stray file
    assert "unknown key 'shelfColour'" in report  # an unknown key
    assert "mcpToolset 'reviews_mcp'" in report and "no fake code" in report
    # Every key of a known object says what becomes of it, not only the unknown ones.
    tool = report.split("tools/find_book/find_book.yaml\n", 1)[1].split("\n  tools/", 1)[0]
    assert "ignored:             executionType ASYNCHRONOUS" in tool and "runs:                timeout 5s" in tool, tool
    late = report.split("guardrails/late_night/late_night.yaml\n", 1)[1].split("\n  guardrails/", 1)[0]
    assert "ignored:             guardrail 'Late Night' — enabled is not true" in late, late
    assert "guardrails/age_check/age_check.json\n    runs:                guardrail 'Age Check'" in report
    assert "action respondImmediately" in report
    # The playback scripts: the project's golden and the instruction's few-shot block, with
    # every call in them playable (toolset tools included, by their toolId).
    assert "evals/goldens/browse.yaml\n    runs:                1 conversation(s) played back by the offline model — find_dune" in report
    assert "instruction of agent 'Front Desk'\n    runs:                1 conversation(s)" in report
    assert "is not a tool of any agent" not in report, report


def test_check_of_an_app_with_no_script_says_so_and_a_broken_app_exits_2(tmp_path):
    done = _check("--app", str(CONSOLE_DIR))
    assert done.returncode == 0 and "(playback scripts)" not in done.stdout  # its few-shot block plays
    (tmp_path / "app.yaml").write_text("displayName: Empty\nrootAgent: Nobody\n")
    (tmp_path / "agents").mkdir()
    done = _check("--app", str(tmp_path))
    assert done.returncode == 2 and "Nobody" in done.stdout, done.stdout
    done = _check("--app", str(APP_DIR), "--examples", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "--examples" in done.stderr


# --- tools, state, callbacks ----------------------------------------------------------------

def test_tools_see_state_that_callbacks_wrote_and_call_each_other(clients):
    talk = Conversation(clients[0])
    turn = talk.say("Do you have Dune?")
    found = turn.tool_response("find_book")
    # context.variables has the declared default; the before_agent and before_model callbacks'
    # state writes reached the tool; tools.price_book() ran nested; after_tool stamped the answer
    # with what the tool had just written to the state.
    assert found["level_seen"] == "standard" and found["price"] == 8.99, found
    assert found["trail"] == "before_agent,before_model" and found["stamped"] == "Dune", found
    # after_model_callback (proactiveExecutionEnabled) replaced the model's words.
    assert turn.text == "Yes, Dune costs £8.99. (prices include VAT)"
    stages = [(s["stage"], s["agent"], s["_parent"]) for s in turn.spans("Callback") if s["name"] != "guardrail Age Check"]
    assert stages[:3] == [("before_agent_callback", "Front Desk", "root"), ("before_model_callback", "Front Desk", "root"),
                          ("after_model_callback", "Front Desk", "root")], stages
    assert ("before_tool_callback", "Front Desk", "Tool") in stages and ("after_tool_callback", "Front Desk", "Tool") in stages
    assert stages[-1] == ("after_agent_callback", "Front Desk", "root")
    # The state persists into the next turn's callbacks and the model's preempted answer.
    later = talk.say("What are your opening hours?")
    assert later.text == "We open at 9, standard member (turn 2)."
    assert not later.spans("LLM")  # the before_model_callback's LlmResponse preempted the model
    assert "DISABLED" not in turn.text + later.text


def test_a_callback_ends_the_session_and_a_raising_one_names_its_file_and_line(clients):
    talk = Conversation(clients[0])
    turn = talk.say("crash the callback please")
    failed = [s for s in turn.spans("Callback") if s.get("error")]
    assert failed and "KeyError" in failed[0]["error"], turn.spans("Callback")
    assert "agents/front_desk/before_model_callbacks/before_model_callbacks_01/python_code.py, line 10" in failed[0]["error"]
    bye = talk.say("bye")
    assert bye.text == "Happy reading!" and any(ces_v1.SessionOutput.pb(o).HasField("end_session") for o in bye.outputs)


def test_the_guardrails_trigger_with_their_canned_answers(clients):
    minor = Conversation(clients[0]).say("I am 12 and want a book")
    assert minor.text == "Sorry, that title is for adults."
    assert [(g["name"], g["decision"], g["stage"]) for g in minor.spans("Guardrail")] == [
        ("Age Check", "TRIGGER", "before_agent_callback")]
    assert not minor.spans("LLM")
    spoiler = Conversation(clients[0]).say("Tell me the ending of Dune")
    assert spoiler.text == "No spoilers here, sorry."
    assert ("No Spoilers", "TRIGGER", "user input") in [(g["name"], g["decision"], g["stage"]) for g in spoiler.spans("Guardrail")]


def test_a_message_with_no_script_says_so_without_quoting_an_instruction(clients):
    turn = Conversation(clients[0]).say("What is the weather like on Mars?")
    assert NO_SCRIPT in turn.text and "--examples" in turn.text
    assert "<role>" not in turn.text and "Quire" not in turn.text


# --- toolsets ---------------------------------------------------------------------------------

def test_a_few_shot_call_to_a_toolset_tool_answers_from_its_fake_code(clients):
    turn = Conversation(clients[0], use_tool_fakes=True).say("Is Middlemarch in stock?")
    assert [c["displayName"] for c in turn.chunks("tool_call")] == ["inventory_api_getStock"]
    assert turn.tool_response("inventory_api_getStock") == {"isbn": "9780141439549", "copies": 3}
    assert turn.text == "Yes, we have 3 copies of Middlemarch."


def test_without_fakes_a_toolset_call_fails_saying_why(clients):
    talk = Conversation(clients[0])
    stock = talk.say("Is Middlemarch in stock?").tool_response("inventory_api_getStock")
    assert "GET /stock/{isbn}" in stock["error"] and "use_tool_fakes" in stock["error"], stock
    reviews = talk.say("Any reviews of Dune?").tool_response("reviews_mcp_top_reviews")
    # environment.json's serverAddress replaced the export's `$env_var`
    assert "MCP server https://reviews.example.com/mcp" in reviews["error"] and "toolFakeConfig" in reviews["error"], reviews


def test_fake_code_gets_the_callback_context(clients):
    turn = Conversation(clients[0], use_tool_fakes=True).say("Place a hold on Dune")
    assert turn.tool_response("inventory_api_placeHold") == {"isbn": "9780441013593", "held_for": "R-7"}


def test_a_python_tool_calls_a_toolset_tool_by_its_ces_name(clients):
    faked = Conversation(clients[0], use_tool_fakes=True).say("How many copies of Emma are there?")
    assert faked.tool_response("stock_report") == {"isbn": "9780141439587", "copies": 3, "error": None}
    offline = Conversation(clients[0]).say("How many copies of Emma are there?").tool_response("stock_report")
    assert offline["copies"] is None and "use_tool_fakes" in offline["error"], offline


def test_a_recorded_ces_evaluation_plays_its_toolset_call(clients):
    turn = Conversation(clients[0], use_tool_fakes=True).say("Reserve Emma for me")
    assert [(c["displayName"], c["args"]) for c in turn.chunks("tool_call")] == [
        ("inventory_api_placeHold", {"isbn": "9780141439587", "days": 7})]
    assert turn.tool_response("inventory_api_placeHold")["held_for"] == "R-7"
    assert turn.text == "Emma is held for you for a week."


def test_the_widget_tool_answers_with_its_payload(clients):
    turn = Conversation(clients[0]).say("Show me some fantasy")
    assert turn.tool_response("book_carousel") == {
        "widget": "book_carousel", "widgetType": "PRODUCT_CAROUSEL", "data": {"genre": "fantasy"},
        "uiConfig": {"columns": 4}, "text": "Here are some books."}


# --- the console export -----------------------------------------------------------------------

def test_the_console_export_runs_the_same_app(clients):
    talk = Conversation(clients[0], app=CONSOLE, use_tool_fakes=True)
    turn = talk.say("Is Middlemarch in stock?")
    assert turn.tool_response("inventory_api_getStock") == {"isbn": "9780141439549", "copies": 3}
    assert [s["file"] for s in turn.spans("Callback") if s["stage"] == "before_agent_callback"][-1] == (
        "agents/001b00c5-0000-4000-8000-000000000001/before_agent_callbacks/before_agent_callbacks_01/python_code.py")
    assert talk.say("What are your opening hours?").text == "We open at 9, standard member (turn 2)."
    # No golden here: the golden's lines have no script.
    assert NO_SCRIPT in talk.say("Do you have Dune?").text


def test_a_transfer_rule_hands_vip_members_to_the_orders_desk(clients):
    turn = Conversation(clients[0], app=CONSOLE).say("hi", variables={"member_level": "vip"})
    transfers = [s for s in turn.spans("Tool") if s["name"] == "transfer_to_agent"]
    assert transfers and transfers[0]["agent"] == "Front Desk"
    assert [s["agent"] for s in turn.spans("LLM")] == ["Orders Desk"], turn.spans("LLM")


# --- AgentService and ToolService ---------------------------------------------------------------

def test_agent_service_lists_and_gets_toolsets_guardrails_and_examples(clients):
    _, agents, _ = clients
    assert [t.display_name for t in agents.list_toolsets(parent=APP)] == ["inventory_api", "reviews_mcp"]
    inventory = agents.get_toolset(name=f"{APP}/toolsets/inventory_api")
    assert "url: https://inventory.example.com/v2" in inventory.open_api_toolset.open_api_schema  # $env_var
    assert agents.get_toolset(name=f"{APP}/toolsets/reviews_mcp").mcp_toolset.server_address == "https://reviews.example.com/mcp"
    guardrails = {g.display_name: g for g in agents.list_guardrails(parent=APP)}
    assert set(guardrails) == {"Age Check", "No Spoilers", "Late Night"} and not guardrails["Late Night"].enabled
    age = agents.get_guardrail(name=guardrails["Age Check"].name)
    assert "def before_agent_callback" in age.code_callback.before_agent_callback.python_code
    assert list(agents.list_examples(parent=APP)) == []
    with pytest.raises(exceptions.NotFound):
        agents.get_example(name=f"{APP}/examples/nothing")
    assert agents.get_tool(name=f"{APP}/tools/end_session").system_tool.name == "end_session"
    with pytest.raises(exceptions.NotFound):
        agents.get_toolset(name=f"{APP}/toolsets/nothing")


def test_tool_service_runs_end_session_toolset_tools_and_tracebacks(clients):
    _, _, tools = clients
    ended = tools.execute_tool(request={"parent": APP, "tool": f"{APP}/tools/end_session", "args": {"reason": "done"}})
    assert dict(ended.response) == {"ended": True}
    stock = tools.execute_tool(request={"parent": APP, "args": {"isbn": "1"},
                                        "toolset_tool": {"toolset": f"{APP}/toolsets/inventory_api", "tool_id": "getStock"}})
    assert dict(stock.response) == {"isbn": "1", "copies": 3}
    with pytest.raises(exceptions.BadRequest, match="MCP server https://reviews.example.com/mcp"):
        tools.execute_tool(request={"parent": APP, "args": {"isbn": "1"},
                                    "toolset_tool": {"toolset": f"{APP}/toolsets/reviews_mcp", "tool_id": "top_reviews"}})
    flooded = tools.execute_tool(request={"parent": APP, "args": {"isbn": "boom"},
                                          "toolset_tool": {"toolset": f"{APP}/toolsets/inventory_api", "tool_id": "getStock"}})
    assert ('File "toolsets/inventory_api/tool_fake_config/code_block/python_code.py", line 5, in fake_tool_call'
            in flooded.response["traceback"]), dict(flooded.response)
    # ExecuteTool's variables are the tool's session state, and come back as they end up.
    found = tools.execute_tool(request={"parent": APP, "tool": f"{APP}/tools/find_book", "args": {"title": "Dune"},
                                        "variables": {"member_level": "vip", "trail": "executed"}})
    assert (found.response["level_seen"], found.response["trail"], found.response["price"]) == ("vip", "executed", 7.99)
    assert dict(found.variables) == {"member_level": "vip", "trail": "executed", "last_title": "Dune", "priced": 1}
    exploded = tools.execute_tool(request={"parent": APP, "tool": f"{APP}/tools/find_book", "args": {"title": "explode"}})
    assert 'File "tools/find_book/python_function/python_code.py", line 8, in find_book' in exploded.response["traceback"]


def test_entry_agent_takes_the_resource_name_list_agents_returns(clients):
    sessions, agents, _ = clients
    orders = next(a.name for a in agents.list_agents(parent=APP) if a.display_name == "Orders Desk")
    turn = Conversation(sessions, entry_agent=orders).say("hi")
    assert [s["agent"] for s in turn.spans("LLM")] == ["Orders Desk"]
    with pytest.raises(exceptions.BadRequest, match="Front Desk, Orders Desk"):
        Conversation(sessions, entry_agent="Nobody").say("hi")


# --- REST by hand ---------------------------------------------------------------------------------

def test_rest_errors_are_google_json_bodies(emulator):
    base = f"{emulator.rest_url}/v1/{APP}"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/toolsets/nothing", timeout=10)
    body = json.loads(err.value.read())
    assert err.value.code == 404 and body["error"]["status"] == "NOT_FOUND" and body["error"]["code"] == 404
    request = urllib.request.Request(f"{base}/sessions/curl-1:runSession", data=b'{"inputs": [{"text": "Do you have Dune?"}]}',
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        outputs = json.loads(answer.read())["outputs"]
    assert outputs[-1]["text"] == "Yes, Dune costs £8.99. (prices include VAT)"
    bad = urllib.request.Request(f"{base}/sessions/curl-2:runSession", data=b'{"inputs": [{"txet": "hi"}]}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    body = json.loads(err.value.read())
    assert err.value.code == 400 and body["error"]["status"] == "INVALID_ARGUMENT" and "txet" in body["error"]["message"]
