"""Client tool calls: schema forms, handlers, breakpoints, mocks, ExecuteTool and the log,
against the live emulator and the official clients; widgets driven headlessly."""

from __future__ import annotations

import asyncio
import json
import textwrap

import ipywidgets as w
import pytest

import ces_nb
from ces_nb.errors import CesError
from ces_nb.model import ToolCall
from ces_nb.render.tool_form import Field, ToolCallForm, ToolCallPanel, infer_schema

from conftest import APP, EmulatorProcess

BOOK = "I'd like to book a seat on flight SW123"
HOSTILE = '<script>alert(1)</script><img src=x onerror=alert(2)>'

EVERY_TYPE = {
    "type": "OBJECT",
    "required": ["seat", "confirmed", "cabin", "flight", "passengers"],
    "properties": {
        "seat": {"type": "STRING"},
        "row": {"type": "INTEGER"},
        "price": {"type": "NUMBER"},
        "confirmed": {"type": "BOOLEAN"},
        "cabin": {"type": "STRING", "enum": ["economy", "business"]},
        "flight": {"type": "OBJECT", "required": ["number"], "properties": {"number": {"type": "STRING"}, "day": {"type": "INTEGER"}}},
        "passengers": {"type": "ARRAY", "items": {"type": "OBJECT", "required": ["name"],
                                                   "properties": {"name": {"type": "STRING"}, "age": {"type": "INTEGER"}}}},
        "extra": {"type": "STRING", "description": "free"},
    },
}


@pytest.fixture
def client(emulator):
    c = ces_nb.connect(APP, endpoint=emulator.address)
    yield c
    c.close()


def call(args=None, name="select_seat") -> ToolCall:
    return ToolCall(id="c1", tool=f"{APP}/tools/{name}", display_name=name, args=args or {})


def test_form_has_an_editor_for_every_schema_type():
    form = ToolCallForm(call(), {"response": EVERY_TYPE}, proposed={"seat": "14C", "passengers": [{"name": "Ada"}]})
    kids = form.field.children
    assert isinstance(kids["seat"].widget, w.Text) and kids["seat"].widget.value == "14C"
    assert isinstance(kids["row"].widget, w.IntText) and isinstance(kids["price"].widget, w.FloatText)
    assert isinstance(kids["confirmed"].widget, w.Checkbox)
    assert isinstance(kids["cabin"].widget, w.Dropdown) and kids["cabin"].widget.options == (("economy", "economy"), ("business", "business"))
    assert isinstance(kids["flight"].widget, w.VBox) and set(kids["flight"].children) == {"number", "day"}
    assert list(kids)[:5] == ["seat", "confirmed", "cabin", "flight", "passengers"]  # required first, in order
    labels = [line.children[0].value for line in form.field.widget.children]
    assert labels[0] == "<b>seat</b> <span class=ces-required title=required>*</span>" and labels[-1] == "<b>row</b>"  # required marked
    passengers = kids["passengers"]
    assert len(passengers.rows) == 1 and passengers.rows[0][0].children["name"].widget.value == "Ada"
    passengers.add_button.click()
    passengers.rows[1][0].children["name"].widget.value = "Grace"
    passengers.rows[1][0].children["age"].widget.value = 9
    kids["flight"].children["number"].widget.value = "SW7"
    kids["cabin"].widget.value = "business"
    kids["confirmed"].widget.value = True
    kids["price"].widget.value = 99.5
    assert form.value() == {"seat": "14C", "confirmed": True, "cabin": "business", "flight": {"number": "SW7"},
                            "passengers": [{"name": "Ada"}, {"name": "Grace", "age": 9}], "price": 99.5}
    passengers.rows[0][1].children[1].click()  # remove Ada
    assert form.value()["passengers"] == [{"name": "Grace", "age": 9}]


def test_invalid_input_shows_inline_and_keeps_what_was_typed():
    form = ToolCallForm(call(), {"response": EVERY_TYPE})
    form.field.children["flight"].children["number"].widget.value = ""
    with pytest.raises(ValueError, match="seat is required"):
        form.value()
    assert "seat is required" in form.error.value
    form.field.children["seat"].widget.value = "3A"
    with pytest.raises(ValueError, match="number is required"):
        form.value()
    assert form.field.children["seat"].widget.value == "3A"  # kept
    form.tabs.selected_index = 1
    form.raw.value = '{"seat": "3A",'
    with pytest.raises(ValueError, match="not JSON"):
        form.value()
    assert form.raw.value == '{"seat": "3A",' and "not JSON" in form.error.value
    form.raw.value = '[1, 2]'
    with pytest.raises(ValueError, match="JSON object"):
        form.value()
    form.raw.value = '{"seat": "3A", "anything": [1]}'
    assert form.value() == {"seat": "3A", "anything": [1]} and form.error.value == ""


def test_no_schema_is_inferred_from_the_args():
    assert infer_schema({"a": 1, "b": [True], "c": {"d": "x"}, "e": 1.5}) == {
        "type": "OBJECT", "properties": {"a": {"type": "INTEGER"}, "b": {"type": "ARRAY", "items": {"type": "BOOLEAN"}},
                                         "c": {"type": "OBJECT", "properties": {"d": {"type": "STRING"}}}, "e": {"type": "NUMBER"}}}
    form = ToolCallForm(call({"city": "Paris", "days": 3}, name="weather"), schema={})
    assert set(form.field.children) == {"city", "days"}
    assert isinstance(Field({}, {"x": 1}).widget, w.Textarea)


def test_hostile_strings_in_args_and_schemas_render_inert():
    schema = {"response": {"type": "OBJECT", "required": [HOSTILE],
                           "properties": {HOSTILE: {"type": "STRING", "description": HOSTILE, "enum": [HOSTILE, "ok"]}}}}
    form = ToolCallForm(ToolCall(id=HOSTILE, tool=HOSTILE, display_name=HOSTILE, args={HOSTILE: HOSTILE}), schema)
    html_values = [form.children[0].value] + [line.children[0].value for line in form.field.widget.children]
    for value in html_values:
        assert "<script" not in value and "<img" not in value and "&lt;script&gt;" in value
    assert form.args_text.disabled  # read-only until "edit and replay"


def test_form_schema_comes_from_get_tool(client):
    schema = client.tool_schema(APP, f"{APP}/tools/select_seat")
    assert schema_type_of(schema["response"]) == "OBJECT" and "seat" in schema["response"]["properties"]
    assert client.tool_schema(APP, "get_flight_status") == {}  # a python tool has no client schema
    assert client.tools_of(APP) is client.tools_of(APP)  # fetched once per app


def schema_type_of(schema):
    from ces_nb.render.tool_form import schema_type

    return schema_type(schema)


def test_form_send_answers_and_the_continuation_uses_the_typed_value(client):
    session = client.session()
    turn = session.send(BOOK)
    assert "select_seat" in turn._repr_mimebundle_()["text/html"]  # the static table stays
    panel = turn.panel()
    assert isinstance(panel, ToolCallPanel) and turn.panel() is panel
    (form,) = panel.forms
    form.field.children["seat"].widget.value = "21B"
    form.field.children["confirmed"].widget.value = True
    continuation = panel.send()
    assert "21B" in continuation.text and session.pending == {}
    assert panel.send_button.disabled and "sent 1 response" in panel.status.value
    log = session.tool_calls
    row = log[log.tool == "select_seat"].iloc[0]
    assert row.how == "form" and row.response["seat"] == "21B" and row.latency_ms > 0 and row.turn == 1
    assert continuation.panel() is None  # nothing left to answer


def _all_widgets(widget):
    from ces_nb.render.tool_form import _descendants

    return list(_descendants(widget))


def _assert_closed(panel, why):
    assert panel.closed and why in panel.status.value
    editable = [x for x in _all_widgets(panel) if hasattr(x, "disabled") and not x.disabled]
    assert editable == []
    assert panel.send() is None  # a closed form sends nothing


def test_form_disables_itself_when_python_answers_its_call(client):
    session = client.session()
    turn = session.send(BOOK)
    panel = turn.panel()
    assert not panel.closed and not panel.send_button.disabled
    (call_id,) = session.pending
    session.respond({call_id: {"seat": "2A", "confirmed": True, "price": 340.0}})
    _assert_closed(panel, "already answered (by manual)")
    assert len(session.turns) == 2  # the form's send did not go out


def test_form_disables_itself_when_another_form_answers(client):
    session = client.session()
    turn = session.send(BOOK)
    first, second = session.tool_panel(turn.tool_calls), session.tool_panel(turn.tool_calls)
    first.forms[0].field.children["seat"].widget.value = "9C"
    first.forms[0].field.children["confirmed"].widget.value = True
    assert "9C" in first.send().text
    _assert_closed(second, "already answered (by form)")
    assert "sent 1 response" in first.status.value


def test_form_disables_itself_when_its_session_ends(client):
    session = client.session()
    turn = session.send(BOOK)
    panel = turn.panel()
    session.send("That's all, thanks. Goodbye!")
    assert session.ended
    _assert_closed(panel, "the session ended")


def test_form_shows_the_args_once_a_clean_header_and_no_inline_styles(client):
    session = client.session()
    turn = session.send(BOOK)
    (form,) = turn.panel().forms
    head = form.children[0].value
    assert head.count("select_seat") == 1 and turn.tool_calls[0].id in head
    assert form.args_text.layout.display == "none"  # the turn's table above already shows the args
    form.edit_toggle.value = True
    assert form.args_text.layout.display == "" and not form.args_text.disabled
    form.edit_toggle.value = False
    widgets = _all_widgets(turn.panel())
    for x in widgets:
        assert "style=" not in str(getattr(x, "value", "") if isinstance(x, w.HTML) else "")
        assert x.layout.border is None and x.layout.width is None
    assert "ces-form" in turn.panel()._dom_classes and "ces-form-wide" in form.raw._dom_classes


def test_form_validation_blocks_send_and_cancel_leaves_the_call_waiting(client):
    session = client.session()
    turn = session.send(BOOK)
    panel = turn.panel()
    assert panel.send() is None and "fix the fields" in panel.status.value and session.pending
    panel.cancel()
    assert panel.send_button.disabled and "%cescmd tools pending" in panel.status.value and len(session.pending) == 1


def test_handler_answers_automatically_sync_and_async(client):
    session = client.session()
    seen = {}

    @session.client_tool("select_seat")
    def pick(flight, passengers, cabin):
        seen.update(flight=flight, cabin=cabin)
        return {"seat": "2C", "confirmed": True, "price": 150.0}

    turn = session.send(BOOK)
    assert seen == {"flight": {"number": "SW123", "date": "2026-12-01"}, "cabin": "economy"}
    assert turn.continuation is not None and "2C" in turn.continuation.text and session.pending == {}
    assert turn.chain == [turn, turn.continuation] and "answered by handler (select_seat)" in turn.notes[0]
    html = turn._repr_mimebundle_()["text/html"]
    assert html.count('class="ces-turn"') == 2 and "2C" in html

    other = client.session()

    @other.client_tool("select_seat")
    async def pick_async(**args):
        await asyncio.sleep(0)
        return {"seat": "5D", "confirmed": True, "price": 80.0}

    assert "5D" in other.send(BOOK).last.text


def test_handler_exception_becomes_an_error_response_not_a_crash(client):
    session = client.session()

    @session.client_tool("select_seat")
    def broken(**args):
        raise ValueError("seat map unavailable")

    turn = session.send(BOOK)
    response = turn.continuation.inputs[0].value[0].response
    assert response == {"error": "ValueError: seat map unavailable"}
    assert "seat map unavailable" in turn._repr_mimebundle_()["text/plain"]
    assert session.tool_calls.iloc[0].how == "handler"


def test_breakpoint_holds_the_handlers_answer_for_editing(client):
    session = client.session()
    session.client_tool("select_seat")(lambda **a: {"seat": "7F", "confirmed": True, "price": 111.0})
    session.break_on("select_seat")
    turn = session.send(BOOK)
    assert turn.continuation is None and len(session.pending) == 1 and "breakpoint" in turn.notes[0]
    form = turn.panel().forms[0]
    assert form.field.children["seat"].widget.value == "7F"  # the proposal, ready to edit
    form.field.children["seat"].widget.value = "8G"
    continuation = turn.panel().send()
    assert "8G" in continuation.text and "111" in continuation.text
    session.clear_break("select_seat")
    assert "7F" in session.send(BOOK).last.text  # the handler answers again


def test_edit_and_replay_runs_the_handler_on_edited_args(client):
    session = client.session()
    session.client_tool("select_seat")(lambda cabin, **a: {"seat": "1A" if cabin == "business" else "30F", "confirmed": True})
    session.break_on("select_seat")
    turn = session.send(BOOK)
    form = turn.panel().forms[0]
    form.edit_toggle.value = True
    assert not form.args_text.disabled
    args = json.loads(form.args_text.value)
    args["cabin"] = "business"
    form.args_text.value = json.dumps(args)
    form.replay_button.click()
    assert form.field.children["seat"].widget.value == "1A"


def test_mocks_match_and_unmatched_calls_follow_the_behaviour(client):
    session = client.session()
    session.mock("select_seat", {"seat": "MOCK1", "confirmed": True, "price": 1.0}, args={"cabin": "economy", "flight": {"number": "SW1.*"}})
    assert "MOCK1" in session.send(BOOK).last.text
    assert session.tool_calls.iloc[0].how == "mock"
    unmatched = session.send("I'd like to book a seat on flight SW42")  # SW42 doesn't match SW1.*
    assert unmatched.continuation is None and len(session.pending) == 1  # PASS_THROUGH: waits for a form
    failing = client.session()
    failing.mock("select_seat", {"seat": "X"}, args={"flight": {"number": "SW9.*"}}, unmatched="FAIL")
    turn = failing.send(BOOK)
    assert turn.continuation.inputs[0].value[0].response["error"].startswith("no mock for select_seat")
    with pytest.raises(ValueError, match="PASS_THROUGH or FAIL"):
        failing.mock("x", {}, unmatched="SOMETIMES")


def test_execute_tool_round_trip_with_and_without_mocks(client):
    session = client.session()
    result = session.run_tool("get_flight_status", flight_number="SW12")
    assert result.response["flight_number"] == "SW12" and not result.mocked and result.name == "get_flight_status"
    session.mock("get_flight_status", {"status": "cancelled"}, args={"flight_number": "SW9.*"})
    mocked = session.run_tool("get_flight_status", flight_number="SW99")
    assert mocked.response == {"status": "cancelled"} and mocked.mocked
    assert session.run_tool("get_flight_status", flight_number="SW12").response["flight_number"] == "SW12"  # PASS_THROUGH
    session.tools.unmatched = "FAIL"
    with pytest.raises(CesError, match="no mocked call"):
        session.run_tool("get_flight_status", flight_number="SW12")
    with pytest.raises(CesError, match="no mocked call"):  # FAIL covers every tool, mocked or not
        session.run_tool("search_policies", query="checked bags")
    session.tools.unmatched = "PASS_THROUGH"
    cited = session.run_tool("search_policies", query="checked bags")
    assert cited.citations and "baggage" in cited._repr_mimebundle_()["text/html"].lower()
    with pytest.raises(CesError, match="not in app"):
        session.run_tool("no_such_tool")


def test_log_has_every_call_with_how_and_latency(client):
    session = client.session()
    session.client_tool("select_seat")(lambda **a: {"seat": "4B", "confirmed": True, "price": 10.0})
    session.send(BOOK)
    session.send("What's the status of flight SW12?")
    log = session.tool_calls
    assert list(log.columns) == ["turn", "id", "tool", "args", "response", "how", "latency_ms"]
    client_row = log[log.tool == "select_seat"].iloc[0]
    assert client_row.how == "handler" and client_row.args["cabin"] == "economy" and client_row.response["seat"] == "4B"
    server_row = log[log.tool == "get_flight_status"].iloc[0]
    assert server_row.how == "server" and server_row.args == {"flight_number": "SW12"} and server_row.latency_ms > 0
    fakes = client.session(use_tool_fakes=True)
    fakes.send("What's the status of flight SW12?")
    assert set(fakes.tool_calls.how) == {"fake"}


TWO_CALLS = {
    "app.yaml": "name: twocalls\ndisplayName: Two calls\nrootAgent: Desk\n",
    "agents/desk/desk.yaml": "displayName: Desk\ninstruction: Checks two things.\ntools: [check_a, check_b]\n",
    "tools/check_a/check_a.yaml": "displayName: check_a\nclientFunction:\n  name: check_a\n  parameters: {type: OBJECT, properties: {q: {type: STRING}}}\n",
    "tools/check_b/check_b.yaml": "displayName: check_b\nclientFunction:\n  name: check_b\n",
    "examples/both/both.yaml": textwrap.dedent("""
        displayName: both
        messages:
        - role: user
          chunks: [{text: "check both things please"}]
        - role: agent
          chunks:
          - toolCall: {tool: check_a, args: {q: "a"}}
          - toolCall: {tool: check_b, args: {}}
          - toolResponse: {tool: check_a, response: {a: 1}}
          - toolResponse: {tool: check_b, response: {b: 2}}
          - text: "Both done: {b}."
    """),
}


def test_several_pending_calls_are_answered_together(tmp_path):
    for rel, body in TWO_CALLS.items():
        path = tmp_path / "twocalls" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    server = EmulatorProcess("--app", str(tmp_path / "twocalls"), "--db", ":memory:")
    try:
        client = ces_nb.connect("projects/p/locations/us/apps/twocalls", endpoint=server.address)
        session = client.session()
        turn = session.send("check both things please")
        assert sorted(c.name for c in turn.tool_calls) == ["check_a", "check_b"] and len(session.pending) == 2
        panel = turn.panel()
        assert len(panel.forms) == 2
        for form in panel.forms:
            form.tabs.selected_index = 1
            form.raw.value = json.dumps({"a": 1} if form.call.name == "check_a" else {"b": 42})
        continuation = panel.send()
        assert "Both done: 42" in continuation.text and session.pending == {}
        assert [i.kind for i in continuation.inputs] == ["tool_responses"] and len(continuation.inputs[0].value) == 2
        client.close()
    finally:
        server.stop()


def test_display_shows_the_static_table_then_the_form(client):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()  # display() publishes through a shell, as in a kernel
    session = client.session()
    turn = session.send(BOOK)
    with capture_output() as captured:
        turn._ipython_display_()
    static, form = captured.outputs
    assert "ces-section ces-tools" in static.data["text/html"] and "application/vnd.jupyter.widget-view+json" not in static.data
    assert "application/vnd.jupyter.widget-view+json" in form.data
    # The record itself is plain: no session, no widgets, just its static bundle.
    from IPython.display import display

    record = turn.record
    assert not hasattr(record, "session") and not hasattr(record, "_ipython_display_")
    with capture_output() as captured:
        display(record)
    (static,) = captured.outputs
    assert "ces-section ces-tools" in static.data["text/html"] and "application/vnd.jupyter.widget-view+json" not in static.data
