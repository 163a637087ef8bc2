"""%ces / %%ces / %cescmd through a real InteractiveShell against the live emulator: every flag, every UsageError."""

from __future__ import annotations

import json
import re

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ces_nb.model import Transcript, Turn
from ces_nb.session import LiveTurn

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def magics(ip):
    from ces_nb.magics import _instances

    return _instances[id(ip)]


def test_loading_registers_line_and_cell_magic_and_unload_removes_it(shell):
    assert "ces" not in shell.magics_manager.magics["line"] and "cescmd" not in shell.magics_manager.magics["line"]
    shell.extension_manager.load_extension("ces_nb")
    assert "ces" in shell.magics_manager.magics["line"] and "ces" in shell.magics_manager.magics["cell"]
    assert "cescmd" in shell.magics_manager.magics["line"]
    shell.extension_manager.unload_extension("ces_nb")
    assert "ces" not in shell.magics_manager.magics["line"] and "cescmd" not in shell.magics_manager.magics["line"]


def test_text_turn_is_returned_and_auto_connects(ip):
    turn = ip.run_line_magic("ces", "Hello, it's me")  # an apostrophe needs no quoting
    assert isinstance(turn, LiveTurn) and isinstance(turn.record, Turn) and turn.index == 1 and "traveler" in turn.text
    m = magics(ip)
    assert m.client.target == m.emulator_address and m.session.app.endswith("/apps/skyway")
    assert turn.inputs[0].value == "Hello, it's me"


def test_every_send_flag(ip, tmp_path):
    image, blob = tmp_path / "photo.png", tmp_path / "doc.pdf"
    image.write_bytes(PNG)
    blob.write_bytes(b"%PDF-1.4")
    assert ip.run_line_magic("ces", "--dtmf 12#").inputs[0].value == "12#"
    assert ip.run_line_magic("ces", "--event welcome").inputs[0].value == "welcome"
    turn = ip.run_line_magic("ces", """--vars '{"customer_name": "Ada"}' Hello""")
    assert [i.kind for i in turn.inputs] == ["variables", "text"] and "Ada" in turn.text
    assert ip.run_line_magic("ces", f"--image {image} What is this?").inputs[1].value == ("image/png", PNG)
    assert ip.run_line_magic("ces", f"--blob={blob}").inputs[0].value == ("application/pdf", b"%PDF-1.4")
    assert ip.run_line_magic("ces", "-- --dtmf please").inputs[0].value == "--dtmf please"


@pytest.mark.parametrize("sentence", ["show me my balance", "help me", "new booking please", "save my seat",
                                      "say that again", "history of my trips", "connect me to an agent",
                                      "tools for packing?", "live chat please", "break my booking"])
def test_sentences_that_start_like_a_command_are_sent(ip, sentence):
    turn = ip.run_line_magic("ces", sentence)
    assert isinstance(turn, LiveTurn) and isinstance(turn.record, Turn) and turn.inputs[0].value == sentence and turn.text


def test_stream_flag_and_setting_use_one_display_handle(ip):
    with capture_output() as captured:
        turn = ip.run_line_magic("ces", "--stream How many bags can I check?")
    assert turn.completed and turn.citations
    assert len(captured.outputs) >= 3  # the live view, its updates, and its final clearing
    assert any("text/html" in o.data for o in captured.outputs)
    ip.run_line_magic("config", "CesMagics.stream = True")
    with capture_output() as captured:
        turn = ip.run_line_magic("ces", "Can I bring my cat on the plane?")
    assert turn.completed and len(captured.outputs) >= 2
    with capture_output() as captured:
        ip.run_line_magic("ces", "--no-stream Hello")
    assert captured.outputs == []


def test_cell_magic_sends_the_body_as_one_message(ip):
    turn = ip.run_cell_magic("ces", "", "What's the status\nof flight SW12?\n")
    assert turn.inputs[0].value == "What's the status\nof flight SW12?" and "SW12" in turn.text


def test_script_sends_one_turn_per_line(ip):
    with capture_output() as captured:
        result = ip.run_cell_magic("ces", "--script", "# a comment\nHello\n\n--dtmf 1\nWhat is my loyalty tier?\n")
    assert result is None
    turns = magics(ip).session.turns
    assert [t.inputs[0].value for t in turns] == ["Hello", "1", "What is my loyalty tier?"]
    assert sum("text/html" in o.data for o in captured.outputs) == 3


def test_connect_new_history_save_load(ip, emulator, tmp_path):
    client = ip.run_line_magic("cescmd", f"connect --endpoint {emulator.address}")
    assert client.target == emulator.address
    client = ip.run_line_magic("cescmd", "connect --emulator skyway")
    assert client.app.endswith("/apps/skyway")
    session = ip.run_line_magic("cescmd", """new --session-id magic-new-1 --entry-agent 'Booking Agent' --time-zone Europe/Paris --vars '{"customer_name": "Grace"}' --stream""")
    assert session.id == "magic-new-1" and session.config == {"entry_agent": "Booking Agent", "time_zone": "Europe/Paris"}
    with capture_output():
        turn = ip.run_line_magic("ces", "Hello")
    assert turn.inputs[0].kind == "variables" and turn.inputs[0].value == {"customer_name": "Grace"}
    ip.run_line_magic("ces", "What's the status of flight SW34?")
    assert ip.run_line_magic("cescmd", "new --app skyway --use-tool-fakes").config == {"use_tool_fakes": True}
    ip.run_line_magic("ces", "Hello")
    history = ip.run_line_magic("cescmd", "history")
    assert isinstance(history, Transcript) and len(history) == 1
    path = tmp_path / "t.json"
    with capture_output() as captured:
        note = ip.run_line_magic("cescmd", f"save {path}")
    assert captured.stdout == ""  # a confirmation is returned, not printed
    assert "saved 1 turn(s)" in repr(note) and "saved 1 turn(s)" in note._repr_mimebundle_()["text/html"]
    assert json.loads(path.read_text())["format"] == "ces_nb.transcript"
    loaded = ip.run_line_magic("cescmd", f"load {path}")
    assert loaded == history


def test_config_traitlets(ip):
    m = magics(ip)
    ip.run_line_magic("config", "CesMagics.stream = True")
    assert m.stream is True
    ip.run_line_magic("config", "CesMagics.app = 'projects/x/locations/us/apps/skyway'")
    assert m.app == "projects/x/locations/us/apps/skyway"


def test_help_is_generated_from_the_parsers(ip):
    from ces_nb.magics import COMMANDS, CesMagics

    doc = ip.find_line_magic("ces").__doc__
    assert doc.startswith("::\n\n  %ces [--dtmf DIGITS]")  # magic_arguments' usage line
    for action in CesMagics.ces.parser._actions:
        assert action.help in " ".join(doc.split()) or action.help.replace("%%", "%") in " ".join(doc.split())
    for word in ("--dtmf", "--event", "--vars", "--image", "--blob", "--stream", "--script", "%cescmd", "CesMagics.stream"):
        assert word in doc
    cmd_doc = ip.find_line_magic("cescmd").__doc__
    for name, make in COMMANDS.items():
        assert f"%cescmd {name}" in cmd_doc and make().description in cmd_doc
    assert "--session-id" in cmd_doc and "--unmatched" in cmd_doc and "--since" in cmd_doc


@pytest.mark.parametrize("line, words", [
    ("nwe", "no command 'nwe'; did you mean new? %cescmd? lists them"),
    ("histroy", "did you mean history?"),
    ("conversation --since 1h", "did you mean conversations?"),
    ("hello there", "no command 'hello'; %cescmd? lists them (to send it as text: %ces hello there)"),
    ("", "which command?"),
    ("help", "no command 'help'"),
])
def test_an_unknown_command_says_what_to_type(ip, line, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        ip.run_line_magic("cescmd", line)


@pytest.mark.parametrize(
    "line, words",
    [
        ("", "type a message"),
        ("--colour red hi", "unknown option --colour"),
        ("-x hi", "unknown option -x"),
        ("--vars notjson", "--vars takes JSON"),
        ("--vars '[1, 2]'", "JSON object"),
        ("--dtmf", "--dtmf needs a value"),
        ("--event 'unclosed", "unbalanced quotes"),
        ("--image /no/such/file.png", "no image file"),
        ("--script hi", "%%ces --script"),
    ],
)
def test_usage_errors_say_what_to_type(ip, line, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        ip.run_line_magic("ces", line)


@pytest.mark.parametrize(
    "line, words",
    [
        ("history extra", "takes no arguments"),
        ("save", "the following arguments are required: path"),
        ("load /no/such/transcript.json", "%cescmd save"),
        ("connect --endpoint", "expected one argument"),
        ("connect --emulator --endpoint h:1", "not allowed with"),
        ("new --bogus", "unrecognized arguments"),
        ("new --vars '{bad'", "--vars takes JSON"),
    ],
)
def test_command_usage_errors_say_what_to_type(ip, line, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        ip.run_line_magic("cescmd", line)


def test_unknown_app_is_a_usage_error_naming_it(ip):
    ip.run_line_magic("cescmd", "new --app nosuchapp")
    with pytest.raises(UsageError, match="not found.*nosuchapp"):
        ip.run_line_magic("ces", "hi")


def test_usage_errors_without_a_session(ip):
    with pytest.raises(UsageError, match="no session yet"):
        ip.run_line_magic("cescmd", "history")
    with pytest.raises(UsageError, match="no session yet"):
        ip.run_line_magic("cescmd", "save x.json")
    with pytest.raises(UsageError, match="put the text in the cell"):
        ip.run_cell_magic("ces", "hello", "world")
    with pytest.raises(UsageError, match="no lines to send"):
        ip.run_cell_magic("ces", "--script", "# only a comment\n")


def test_a_failed_connect_with_no_previous_connection_starts_nothing(ip):
    with pytest.raises(UsageError, match="(?s)ces-nb emulator.*no connection now.*%cescmd connect"):
        ip.run_line_magic("cescmd", "connect --endpoint 127.0.0.1:1 projects/p/locations/us/apps/skyway")
    m = magics(ip)
    assert m.client is None and m.session is None
    with pytest.raises(UsageError, match="no connection: the last %cescmd connect failed.*%cescmd connect"):
        ip.run_line_magic("ces", "hi")
    with pytest.raises(UsageError, match="no connection"):
        ip.run_line_magic("cescmd", "new")
    assert m.client is None  # nothing was started or used silently
    client = ip.run_line_magic("cescmd", "connect")
    assert client.target == m.emulator_address and ip.run_line_magic("ces", "Hello").completed


def test_a_failed_connect_keeps_the_previous_connection(ip, emulator):
    first = ip.run_line_magic("ces", "Hello")
    m = magics(ip)
    client, session = m.client, m.session
    with pytest.raises(UsageError, match=f"(?s)unreachable.*previous connection stays: {re.escape(emulator.address)}"):
        ip.run_line_magic("cescmd", "connect --endpoint 127.0.0.1:1")
    with pytest.raises(UsageError, match="(?s)not found.*nosuchapp.*previous connection stays"):
        ip.run_line_magic("cescmd", f"connect --endpoint {emulator.address} nosuchapp")
    with pytest.raises(UsageError, match="(?s)not an app name.*previous connection stays"):
        ip.run_line_magic("cescmd", "connect projects/p/apps/x")
    assert m.client is client and m.session is session
    assert ip.run_line_magic("ces", "What is my loyalty tier?").index == first.index + 1


def test_a_first_send_in_a_fresh_kernel_starts_the_emulator_connection(ip):
    m = magics(ip)
    assert m.client is None and not m.connect_failed
    assert ip.run_line_magic("ces", "Hello").completed and m.client.target == m.emulator_address


def test_bad_transcript_file_is_a_usage_error(ip, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="is not JSON"):
        ip.run_line_magic("cescmd", f"load {path}")


def test_a_question_is_a_message_not_a_help_request(ip):
    ip.user_ns.pop("answer", None)
    with capture_output() as captured:
        result = ip.run_cell("%ces How many bags can I check?")
    assert result.success and "not found" not in captured.stdout
    assert isinstance(result.result, LiveTurn) and result.result.citations
    result = ip.run_cell("answer = %ces What's the status of flight SW12?")
    assert result.success and "SW12" in ip.user_ns["answer"].text
    with capture_output() as captured:
        ip.run_cell("%ces?")  # help on the magic itself still works
    assert "%%ces --script" in captured.stdout
    with capture_output() as captured:
        ip.run_cell("%cescmd?")
    assert "%cescmd connect" in captured.stdout
    ip.extension_manager.unload_extension("ces_nb")
    from ces_nb.magics import keep_questions

    assert keep_questions not in ip.input_transformers_cleanup
    ip.extension_manager.load_extension("ces_nb")


BOOK = "I'd like to book a seat on flight SW123"


def test_client_tool_decorator_break_mock_and_tool_magics(ip):
    import ces_nb

    @ces_nb.client_tool("select_seat")
    def pick(**args):
        return {"seat": "11K", "confirmed": True, "price": 64.0}

    turn = ip.run_line_magic("ces", BOOK)
    assert "11K" in turn.last.text and "answered by handler" in turn.notes[0]
    with capture_output() as captured:
        note = ip.run_line_magic("cescmd", "break select_seat")
    assert "breakpoint on select_seat" in repr(note) and captured.stdout == ""
    held = ip.run_line_magic("ces", BOOK)
    assert held.continuation is None
    pending = ip.run_line_magic("cescmd", "tools pending")
    assert list(pending.tool) == ["select_seat"] and list(pending.columns) == ["turn", "id", "tool", "args"]
    assert repr(ip.run_line_magic("cescmd", "break --clear")) == "all breakpoints cleared"
    note = ip.run_line_magic("cescmd", """mock get_flight_status --args '{"flight_number": "SW4.*"}' --response '{"status": "diverted"}'""")
    assert repr(note) == 'mocked get_flight_status for args matching {"flight_number": "SW4.*"}; unmatched calls: PASS_THROUGH'
    result = ip.run_line_magic("cescmd", "tool run get_flight_status flight_number=SW45")
    assert result.response == {"status": "diverted"} and result.mocked
    real = ip.run_line_magic("cescmd", "tool run get_flight_status flight_number=SW12")
    assert real.response["flight_number"] == "SW12"
    log = ip.run_line_magic("cescmd", "tools log")
    assert {"handler"} <= set(log.how) and "select_seat" in set(log.tool)


@pytest.mark.parametrize(
    "line, words",
    [
        ("tools", "pending or log"),
        ("tools pendin", "invalid choice: 'pendin'"),
        ("break", "name the tool"),
        ("mock select_seat", "the following arguments are required: --response"),
        ("mock select_seat --response notjson", "--response takes JSON"),
        ("mock select_seat --response '{}' --unmatched SOMETIMES", "invalid choice"),
        ("tool", "%cescmd tool run NAME"),
        ("tool walk x", "invalid choice: 'walk'"),
        ("tool run get_flight_status flight_number", "key=value"),
        ("tool run no_such_tool", "not in app"),
    ],
)
def test_client_tool_usage_errors(ip, line, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        ip.run_line_magic("cescmd", line)


def test_client_tool_decorator_needs_the_extension(shell):
    import ces_nb

    with pytest.raises(RuntimeError, match="%load_ext ces_nb"):
        ces_nb.client_tool("x")


def test_conversations_show_fork_and_spans_magics(ip):
    from ces_nb.render.span_tree import SpanTree

    ip.run_line_magic("ces", "Hello")
    turn = ip.run_line_magic("ces", "What's the status of flight SW12?")
    listing = ip.run_line_magic("cescmd", "conversations --since 1h")
    session = magics(ip).session
    assert session.name.replace("/sessions/", "/conversations/") in set(listing.name)
    shown = ip.run_line_magic("cescmd", f"show {session.id}")
    assert [t.text for t in shown.turns][-1] == turn.text
    tree = ip.run_line_magic("cescmd", "spans")
    assert isinstance(tree, SpanTree) and tree.root == turn.root_span
    assert ip.run_line_magic("cescmd", "spans 1").root == session.turns[0].root_span
    fork = ip.run_line_magic("cescmd", "fork 1")
    assert magics(ip).session is fork and fork.forked_from == (session.name, 1)
    assert ip.run_line_magic("ces", "What is my loyalty tier?").index == 1


@pytest.mark.parametrize(
    "line, words",
    [
        ("show", "name one conversation"),
        ("show a b", "name one conversation"),
        ("conversations --since yesterday", "'7d'"),
        ("conversations --source NOWHERE", "LIVE"),
    ],
)
def test_exploring_usage_errors(ip, line, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        ip.run_line_magic("cescmd", line)


def test_fork_and_spans_need_a_session_and_a_turn(ip):
    with pytest.raises(UsageError, match="no session yet"):
        ip.run_line_magic("cescmd", "fork 1")
    ip.run_line_magic("ces", "Hello")
    with pytest.raises(UsageError, match="fork at a turn number"):
        ip.run_line_magic("cescmd", "fork one")
    with pytest.raises(UsageError, match="no turn 5"):
        ip.run_line_magic("cescmd", "fork 5")
    with pytest.raises(UsageError, match="no turn 7 with spans"):
        ip.run_line_magic("cescmd", "spans 7")
    with pytest.raises(UsageError, match="not found"):
        ip.run_line_magic("cescmd", "show no-such-conversation")
