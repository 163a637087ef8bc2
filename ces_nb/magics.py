"""%ces / %%ces talk to a CES agent; %cescmd runs commands (connect, new, history, ...).

As jupysql keeps `%sql` and `%sqlcmd` apart, `%ces TEXT` always sends TEXT: a sentence
like "show me my balance" is never read as a command. Both magics are declared with
`magic_arguments`, so `%ces?` and `%cescmd?` are generated from their parsers.

One CesMagics instance holds all the state (connection, session, history);
settings are traitlets: `%config CesMagics.stream = True`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments
from IPython.display import display
from traitlets import Bool, Unicode

_FLAG = re.compile(r"\s*(--[A-Za-z][\w-]*)(?:=|(?=\s)|$)")
_VALUE = re.compile(r"""\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")


def _parser(prog: str, description: str) -> MagicArgumentParser:
    # MagicArgumentParser turns argparse errors into UsageError.
    return MagicArgumentParser(prog=f"cescmd {prog}", description=description, add_help=False)


def _parse(parser: MagicArgumentParser, arg: str):
    """POSIX shell quoting (IPython's own splitter keeps the quotes around JSON)."""
    try:
        argv = shlex.split(arg)
    except ValueError as exc:
        raise UsageError(f"%{parser.prog}: {exc} in {arg!r}; quote JSON with single quotes, e.g. --vars '{{\"k\": 1}}'") from None
    return parser.parse_args(argv)


# -- the commands' parsers: %cescmd? shows each one's help -------------------------------

def _connect_parser() -> MagicArgumentParser:
    p = _parser("connect", "Connect to the local emulator (started if needed), any emulator endpoint, or a real CES app. "
                "All or nothing: if it fails, the previous connection stays.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--emulator", action="store_true", help="the local emulator (default)")
    group.add_argument("--endpoint", metavar="HOST:PORT", help="an emulator at HOST:PORT")
    p.add_argument("app", nargs="?", help="projects/P/locations/L/apps/A (real CES), or an app id on the emulator")
    return p


def _new_parser() -> MagicArgumentParser:
    p = _parser("new", "Start a new session.")
    p.add_argument("--app", help="app id or full name")
    p.add_argument("--session-id", help="reuse or name the session (default: random)")
    p.add_argument("--entry-agent", help="agent to start with")
    p.add_argument("--time-zone", help="e.g. Europe/Paris")
    p.add_argument("--vars", help='initial variables as JSON, e.g. \'{"customer_name": "Ada"}\'')
    p.add_argument("--deployment", help="deployment resource name")
    p.add_argument("--use-tool-fakes", action="store_true", help="answer tools from their fakes")
    p.add_argument("--stream", action="store_true", help="stream every turn of this session")
    return p


def _history_parser() -> MagicArgumentParser:
    return _parser("history", "The current session so far, as a Transcript.")


def _save_parser() -> MagicArgumentParser:
    p = _parser("save", "Write the session as a transcript file (JSON).")
    p.add_argument("path", help="a .json transcript file")
    return p


def _load_parser() -> MagicArgumentParser:
    p = _parser("load", "Render a saved transcript; no server needed.")
    p.add_argument("path", help="a .json transcript file")
    return p


def _tools_parser() -> MagicArgumentParser:
    p = _parser("tools", "Client tool calls: those still waiting for a response, or every call so far.")
    p.add_argument("what", choices=["pending", "log"], help="pending: calls still waiting; log: args, response, how answered, latency")
    return p


def _break_parser() -> MagicArgumentParser:
    p = _parser("break", "Stop before the answer to NAME is sent; the form shows it, editable.")
    p.add_argument("name", nargs="?", help="tool display name")
    p.add_argument("--clear", action="store_true", help="remove the breakpoint on NAME (all when no NAME)")
    return p


def _mock_parser() -> MagicArgumentParser:
    p = _parser("mock", "Answer calls to TOOL whose args match with a fixed response.")
    p.add_argument("tool", help="tool display name or id")
    p.add_argument("--args", help="JSON object: an args pattern (strings are regexes); omit to match every call")
    p.add_argument("--response", required=True, help="JSON object: the response to give")
    p.add_argument("--unmatched", choices=["FAIL", "PASS_THROUGH"], type=str.upper,
                   help="what a call no mock matches does (ExecuteTool); default PASS_THROUGH")
    return p


def _tool_parser() -> MagicArgumentParser:
    p = _parser("tool", "Run a tool through ToolService.ExecuteTool, e.g. %cescmd tool run get_flight_status flight_number=SW12.")
    p.add_argument("action", choices=["run"], help="run")
    p.add_argument("name", help="tool display name or id")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="the tool's args; a value that parses as JSON is JSON")
    return p


def _conversations_parser() -> MagicArgumentParser:
    p = _parser("conversations", "Stored conversations of the app, as a DataFrame.")
    p.add_argument("--since", help="e.g. 7d, 12h, 30m, or an ISO date")
    p.add_argument("--source", help="LIVE, SIMULATOR, EVAL ...")
    p.add_argument("--app", help="app id or full name (default: the current one)")
    return p


def _show_parser() -> MagicArgumentParser:
    p = _parser("show", "One stored conversation, rendered like live turns.")
    p.add_argument("name", help="a full conversation name, or an id from %%cescmd conversations")
    return p


def _fork_parser() -> MagicArgumentParser:
    p = _parser("fork", "A new session that starts from turns 1..N of this one (historical_contexts).")
    p.add_argument("turn", help="the last turn to keep, e.g. 2")
    return p


def _spans_parser() -> MagicArgumentParser:
    p = _parser("spans", "The interactive span tree of turn N.")
    p.add_argument("turn", nargs="?", help="a turn number (default: the last turn with spans)")
    return p


def _say_parser() -> MagicArgumentParser:
    p = _parser("say", "Speak the words (offline TTS) as an audio turn over BidiRunSession; no quoting needed.")
    p.add_argument("words", nargs=argparse.REMAINDER, help='what to say, e.g. %%cescmd say What is my loyalty tier?')
    return p


def _live_parser() -> MagicArgumentParser:
    p = _parser("live", "Keep one BidiRunSession voice stream open for %cescmd say and %ces --audio.")
    p.add_argument("--rate", type=int, default=16000, help="sample rate (8000, 16000, 24000, 44100, 48000)")
    p.add_argument("--encoding", default="LINEAR16", type=str.upper, choices=["LINEAR16", "MULAW", "ALAW"])
    p.add_argument("--close", action="store_true", help="close the open stream")
    return p


def _eval_parser() -> MagicArgumentParser:
    p = _parser("eval", "Run goldens, tool tests, turn evals and CES Evaluations against the connection; an EvalRun.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="evaluation files or folders (.yaml/.yml/.json)")
    p.add_argument("--app", help="app id or full name (default: the current one)")
    p.add_argument("--parallel", type=int, default=1, help="cases at once (default 1)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    p.add_argument("--baseline", metavar="RUN.json", help="a saved run to compare with: the run and the comparison are "
                                                            "returned together (shown as the comparison, then the run)")
    return p


COMMANDS = {
    "connect": _connect_parser, "new": _new_parser, "history": _history_parser, "save": _save_parser,
    "load": _load_parser, "tools": _tools_parser, "break": _break_parser, "mock": _mock_parser,
    "tool": _tool_parser, "conversations": _conversations_parser, "show": _show_parser, "fork": _fork_parser,
    "spans": _spans_parser, "say": _say_parser, "live": _live_parser, "eval": _eval_parser,
}


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_text_depth(text: str) -> int:
    """How deep brackets nest in JSON text, strings skipped: counted before parsing, which
    would hit the recursion limit on 10 000 nested lists."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _json_arg(value: str, flag: str) -> Any:
    from .model import MAX_JSON_DEPTH

    example = f"{flag} '{{\"customer_name\": \"Ada\"}}'"
    depth = _json_text_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise UsageError(f"{flag} nests {depth} levels deep; CES takes at most {MAX_JSON_DEPTH} (protobuf's nesting limit). "
                         f"Flatten it, or put the deep part in a JSON string; for example: {example}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} takes JSON ({exc.msg}); for example: {example}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag} takes a JSON object, e.g. {flag} '{{\"k\": 1}}'")
    return parsed


@lru_cache(maxsize=1)
def _send_flags() -> tuple[dict[str, str], dict[str, tuple[str, Any]]]:
    """The %ces parser's options: those taking a value (flag -> dest), and switches
    (flag -> (dest, value)). The parser is the one source; split_send_line reads the line."""
    values: dict[str, str] = {}
    switches: dict[str, tuple[str, Any]] = {}
    for action in CesMagics.ces.parser._actions:
        for flag in action.option_strings:
            if action.nargs == 0:
                switches[flag] = (action.dest, action.const)
            else:
                values[flag] = action.dest
    return values, switches


def split_send_line(line: str) -> tuple[dict[str, Any], str]:
    """Leading --flags (values may be quoted) and the free text after them, kept verbatim
    so apostrophes in ordinary sentences need no quoting."""
    value_flags, switches = _send_flags()
    known = ", ".join([*value_flags, *switches])
    options: dict[str, Any] = {}
    pos = 0
    while True:
        rest = line[pos:]
        stripped = rest.lstrip()
        if stripped.startswith("-- ") or stripped == "--":
            pos += len(rest) - len(stripped) + 2
            break
        match = _FLAG.match(line, pos)
        if not match:
            if stripped.startswith("-") and not stripped[1:2].isdigit():
                word = stripped.split()[0]
                raise UsageError(f"unknown option {word}; options are {known}. "
                                 "To send text that starts with '-', write %ces -- your text")
            break
        flag = match.group(1)
        pos = match.end()
        if flag in switches:
            key, value = switches[flag]
            options[key] = value
            continue
        if flag not in value_flags:
            raise UsageError(f"unknown option {flag}; options are {known}. See %ces? (commands are %cescmd: %cescmd? lists them)")
        value_match = _VALUE.match(line, pos)
        if not value_match:
            raise UsageError(f"{flag} needs a value, e.g. {_example(flag)}")
        pos = value_match.end()
        try:
            (value,) = shlex.split(value_match.group(1))
        except ValueError:
            raise UsageError(f"{flag}: unbalanced quotes in {value_match.group(1)!r}; e.g. {_example(flag)}") from None
        options[value_flags[flag]] = value
    return options, line[pos:].strip()


def _example(flag: str) -> str:
    return {
        "--dtmf": "%ces --dtmf 12#",
        "--event": "%ces --event welcome",
        "--vars": "%ces --vars '{\"customer_name\": \"Ada\"}'",
        "--image": "%ces --image photo.png What is this?",
        "--blob": "%ces --blob receipt.pdf",
        "--audio": "%ces --audio question.wav",
    }.get(flag, "%ces?")


class Note:
    """A command's confirmation, returned (and so shown as the cell's result), never printed."""

    def __init__(self, text: str, **details: Any):
        self.text = text
        self.details = details

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other) -> bool:
        return isinstance(other, Note) and other.text == self.text

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render.html import note_html

        return {"text/plain": self.text, "text/html": note_html(self.text)}


@magics_class
class CesMagics(Magics):
    stream = Bool(False, help="Stream turns (StreamRunSession) and draw them as chunks arrive.").tag(config=True)
    app = Unicode("", help="Default app: an id on the emulator, or projects/P/locations/L/apps/A.").tag(config=True)
    emulator_address = Unicode(
        "", help="host:port of the emulator; empty means $CES_NB_EMULATOR or 127.0.0.1:50551."
    ).tag(config=True)

    def __init__(self, shell=None, **kwargs):
        from .client_tools import ClientTools

        super().__init__(shell=shell, **kwargs)
        self.tools = ClientTools()  # handlers, breakpoints and mocks shared by this kernel's sessions
        self.client = None
        self.session = None
        self.pending_variables: dict[str, Any] = {}
        self.session_stream = False
        self.live = None  # an open LiveSession, from %cescmd live
        self.connect_failed = False  # an explicit connect failed and left no connection: nothing starts silently

    # -- the magics ----------------------------------------------------------------

    @magic_arguments()
    @argument("--dtmf", metavar="DIGITS", help="send DTMF digits, e.g. %%ces --dtmf 12#")
    @argument("--event", metavar="NAME", help="send an event, e.g. %%ces --event welcome")
    @argument("--vars", dest="variables", metavar="JSON",
              help="""session variables, alone or with text: %%ces --vars '{"customer_name": "Ada"}' Hello""")
    @argument("--image", metavar="PATH", help="send an image (with text after it, if you like)")
    @argument("--blob", metavar="PATH", help="send any file")
    @argument("--audio", metavar="PATH", help="a spoken turn over BidiRunSession (WAV, FLAC, OGG ...)")
    @argument("--stream", action="store_const", const=True, default=None,
              help="StreamRunSession, drawn as chunks arrive (default: CesMagics.stream)")
    @argument("--no-stream", dest="stream", action="store_const", const=False, help="RunSession, even when CesMagics.stream is on")
    @argument("--script", action="store_const", const=True, default=None,
              help="%%%%ces --script: one turn per non-empty line of the cell; # starts a comment")
    @argument("text", nargs="*",
              help="the message, sent exactly as typed (no quoting; apostrophes are fine). %%ces -- TEXT sends text "
                   "that starts with '-'. With %%%%ces the cell body is the message.")
    @line_cell_magic
    def ces(self, line: str = "", cell: str | None = None):
        """Talk to the CES agent: %ces TEXT sends TEXT and returns the Turn (t = %ces hi).

        %ces always sends: commands (connect, new, history, save, tools, ...) are %cescmd,
        listed by %cescmd?. The first %ces connects to the local emulator and starts a
        session by itself. Settings: %config CesMagics.stream = True, CesMagics.app =
        "skyway", CesMagics.emulator_address = "127.0.0.1:50551".
        """
        options, text = split_send_line(line)
        script = options.pop("script", None)
        if cell is not None:
            if script:
                if text:
                    raise UsageError("%%ces --script takes its lines from the cell body; put the text there")
                return self._script(cell, options)
            if text:
                raise UsageError("%%ces sends the cell body; put the text in the cell, flags on the %%ces line")
            text = cell.strip()
        elif script:
            raise UsageError("--script is for cell magics: start the cell with %%ces --script, one message per line")
        return self._send(text, options)

    @magic_arguments()
    @argument("command", help=f"one of: {', '.join(COMMANDS)} (each one's options are below)")
    @argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    @line_magic
    def cescmd(self, line: str = ""):
        """Commands around %ces (which only ever talks): connect, sessions, history and
        files, client tools, exploring, voice. Each returns what it made or a confirmation;
        a mistake is a UsageError saying what to type.

        Handlers: @ces_nb.client_tool("NAME") def fn(**args): ... answers calls automatically.
        """
        name, _, rest = line.strip().partition(" ")
        if not name:
            raise UsageError(f"which command? {', '.join(COMMANDS)}; %cescmd? describes each one. "
                             "To talk to the agent, use %ces TEXT")
        if name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"no command {name!r}; {hint}%cescmd? lists them (to send it as text: %ces {line.strip()})")
        return getattr(self, f"_cmd_{name}")(rest.strip())

    # -- sending -----------------------------------------------------------------------

    def _send(self, text: str, options: dict[str, Any], show_stream: bool = True):
        from .errors import CesError

        stream = options.pop("stream", None)
        if "variables" in options:
            options["variables"] = _json_arg(options["variables"], "--vars")
        if not text and not options:
            raise UsageError("nothing to send: type a message, e.g. %ces Hello — or see %ces? for --dtmf, --event, --vars, --image, --blob")
        if "audio" in options:
            if text or len(options) > 1:
                raise UsageError("--audio is a turn of its own: %ces --audio question.wav (no text or other flags with it)")
            return self._audio_turn(options["audio"])
        session = self._session()
        if self.pending_variables:
            options["variables"] = {**self.pending_variables, **options.get("variables", {})}
        use_stream = self.stream or self.session_stream if stream is None else stream
        try:
            if use_stream:
                turn = self._stream(session, text, options, show_stream)
            else:
                turn = session.send(text or None, **options)
        except (FileNotFoundError, ValueError, CesError) as exc:
            raise UsageError(str(exc)) from None
        self.pending_variables = {}
        return turn

    def _stream(self, session, text: str, options: dict[str, Any], show: bool):
        handle = display({"text/plain": ""}, raw=True, display_id=True) if show else None

        def update(turn) -> None:
            if handle is not None:
                handle.update(turn._repr_mimebundle_(), raw=True)

        turn = session.stream(text or None, on_output=update, **options)
        if handle is not None:
            # The magic returns the finished Turn, which IPython shows as the cell's result;
            # the live view steps aside so the turn is not drawn twice.
            handle.update({"text/plain": ""}, raw=True)
        return turn

    def _script(self, body: str, options: dict[str, Any]) -> None:
        lines = [ln.strip() for ln in body.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise UsageError("%%ces --script found no lines to send; write one message per line (# starts a comment)")
        for line in lines:
            line_options, text = split_send_line(line)
            line_options.pop("script", None)
            turn = self._send(text, {**options, **line_options}, show_stream=False)
            display(turn)

    # -- state -----------------------------------------------------------------------------

    def _connect(self, app: str | None = None, endpoint: str | None = None, emulator: bool = False, explicit: bool = True):
        """All or nothing: the new connection is checked (its app is read) before it replaces
        the old one; on failure the old one stays, and the message says which that is."""
        from .client import connect
        from .errors import CesError
        from .local_emulator import ensure_emulator

        try:
            if endpoint:
                client = connect(app, endpoint=endpoint)
            elif app and app.startswith("projects/") and not emulator:
                client = connect(app)
            elif self.emulator_address:
                client = connect(app, endpoint=ensure_emulator(self.emulator_address))
            else:
                client = connect(app, emulator=True)
            try:
                client.check()
            except CesError:
                client.close()
                raise
        except (CesError, ValueError, RuntimeError) as exc:
            if self.client is not None:
                kept = (f"The previous connection stays: {self.client.target}, app {self.client.app or '(none)'}; "
                        "%ces still talks there.")
            else:
                self.connect_failed = explicit
                kept = ("There is no connection now, and %ces will not start one by itself: connect with "
                        "%cescmd connect (the local emulator), %cescmd connect --endpoint HOST:PORT, or "
                        "%cescmd connect projects/P/locations/L/apps/A.")
            raise UsageError(f"connect failed: {exc}\n{kept}") from None
        self.client, self.session = client, None
        self.connect_failed = False
        return client

    def _client(self):
        if self.client is None:
            if self.connect_failed:
                raise UsageError("no connection: the last %cescmd connect failed, so there is nowhere to send. "
                                 "Connect with %cescmd connect (the local emulator), %cescmd connect --endpoint HOST:PORT, "
                                 "or %cescmd connect projects/P/locations/L/apps/A")
            # A kernel that never asked for a connection gets the local emulator, as the first %ces always did.
            self._connect(self.app or None, explicit=False)
        return self.client

    def _session(self):
        if self.session is None:
            self._client()
            self.session = self._new_session()
        return self.session

    def _new_session(self, app: str | None = None, session_id: str | None = None, **config):
        from .errors import CesError

        try:
            return self.client.session(app or self.app or None, session_id=session_id, tools=self.tools, **config)
        except CesError as exc:
            raise UsageError(str(exc)) from None

    # -- commands ----------------------------------------------------------------------

    def _cmd_connect(self, arg: str):
        args = _parse(_connect_parser(), arg)
        return self._connect(args.app, endpoint=args.endpoint, emulator=args.emulator)

    def _cmd_new(self, arg: str):
        args = _parse(_new_parser(), arg)
        if self.client is None:
            if args.app and args.app.startswith("projects/") and not self.connect_failed:
                self._connect(args.app, explicit=False)
            else:
                self._client()
        config = {
            "entry_agent": args.entry_agent,
            "time_zone": args.time_zone,
            "deployment": args.deployment,
            "use_tool_fakes": True if args.use_tool_fakes else None,
        }
        self.session = self._new_session(args.app, args.session_id, **{k: v for k, v in config.items() if v is not None})
        self.pending_variables = _json_arg(args.vars, "--vars") if args.vars else {}
        self.session_stream = args.stream
        return self.session

    def _require_session(self):
        if self.session is None:
            raise UsageError("no session yet: send a message first, e.g. %ces Hello (or %cescmd new)")
        return self.session

    def _cmd_tools(self, arg: str):
        if not arg:
            raise UsageError("%cescmd tools takes pending or log: %cescmd tools pending · %cescmd tools log")
        args = _parse(_tools_parser(), arg)
        if args.what == "pending":
            import pandas as pd

            session = self._require_session()
            rows = [{"turn": r.turn, "id": r.id, "tool": r.tool, "args": r.args}
                    for cid, r in self.tools.records.items() if cid in session.pending]
            return pd.DataFrame(rows, columns=["turn", "id", "tool", "args"])
        return self._require_session().tool_calls

    def _cmd_break(self, arg: str) -> Note:
        args = _parse(_break_parser(), arg)
        if args.clear:
            self.tools.clear_break(args.name)
            return Note(f"breakpoint on {args.name} cleared" if args.name else "all breakpoints cleared")
        if not args.name:
            raise UsageError("name the tool: %cescmd break select_seat (or %cescmd break --clear)")
        self.tools.break_on(args.name)
        return Note(f"breakpoint on {args.name}: its handler's or mock's answer waits in the form for you to send")

    def _cmd_mock(self, arg: str) -> Note:
        args = _parse(_mock_parser(), arg)
        response = _json_arg(args.response, "--response")
        pattern = _json_arg(args.args, "--args") if args.args else None
        self.tools.mock(args.tool, response, pattern, args.unmatched)
        return Note(f"mocked {args.tool}" + (f" for args matching {json.dumps(pattern)}" if pattern else " for every call")
                    + f"; unmatched calls: {self.tools.unmatched}")

    def _cmd_tool(self, arg: str):
        if not arg:
            raise UsageError("run a tool with %cescmd tool run NAME key=value ..., "
                             "e.g. %cescmd tool run get_flight_status flight_number=SW12")
        args = _parse(_tool_parser(), arg)
        tool_args = _tool_args(args.pairs)
        session = self._session()
        from .errors import CesError

        try:
            return session.run_tool(args.name, **tool_args)
        except CesError as exc:
            raise UsageError(str(exc)) from None

    def _cmd_conversations(self, arg: str):
        args = _parse(_conversations_parser(), arg)
        self._client()
        from .errors import CesError

        try:
            return self.client.conversations(args.app or (self.session.app if self.session else None), since=args.since, source=args.source)
        except (CesError, ValueError) as exc:
            raise UsageError(str(exc)) from None

    def _cmd_show(self, arg: str):
        if not arg or len(shlex.split(arg)) != 1:
            raise UsageError("name one conversation: %cescmd show NAME (a full name or an id from %cescmd conversations)")
        from google.cloud.ces_v1 import AgentServiceClient

        from .names import parse_app, parse_conversation
        from .errors import CesError

        name = _parse(_show_parser(), arg).name
        self._client()

        try:
            if not parse_conversation(name) and parse_app(self.session.app if self.session else ""):
                name = AgentServiceClient.conversation_path(**parse_app(self.session.app), conversation=name)
            return self.client.conversation(name)
        except CesError as exc:
            raise UsageError(str(exc)) from None

    def _cmd_fork(self, arg: str):
        session = self._require_session()
        at = _parse(_fork_parser(), arg).turn if arg else ""
        try:
            at = int(at)
        except ValueError:
            raise UsageError("fork at a turn number: %cescmd fork 2 (turns so far: "
                             f"{', '.join(str(t.index) for t in session.turns) or 'none'})") from None
        try:
            self.session = session.fork(at)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return self.session

    def _cmd_spans(self, arg: str):
        from .render.span_tree import SpanTree

        wanted = _parse(_spans_parser(), arg).turn
        session = self._require_session()
        turns = [t for t in session.turns if t.root_span is not None]
        if not turns:
            raise UsageError("no turn with spans yet: send a message first, e.g. %ces Hello")
        if wanted is not None:
            try:
                wanted = int(wanted)
            except ValueError:
                raise UsageError("%cescmd spans takes a turn number, e.g. %cescmd spans 2") from None
            turns = [t for t in turns if t.index == wanted]
            if not turns:
                raise UsageError(f"no turn {wanted} with spans; turns: {', '.join(str(t.index) for t in session.turns)}")
        return SpanTree(turns[-1])

    def _audio_turn(self, source, spoken_text: str | None = None):
        from .errors import CesError

        if spoken_text is None and not Path(source).is_file():
            raise UsageError(f"no audio file at {source}; give a WAV/FLAC/OGG path, or speak text: %cescmd say Hello")
        if spoken_text is None:
            _check_audio_file(source)
        session = self._session()
        try:
            if spoken_text is not None:
                if self.live is not None:
                    self.live.say(spoken_text)
                    return self.live.next_turn()
                return session.say(spoken_text)
            if self.live is not None:
                self.live.send_audio(source, realtime=False)
                return self.live.next_turn()
            return session.send_audio(source)
        except (CesError, ValueError) as exc:
            raise UsageError(str(exc)) from None

    def _cmd_say(self, arg: str):
        # The words are taken verbatim (like %ces TEXT); surrounding quotes are optional.
        text = arg.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        if not text:
            raise UsageError("say what? %cescmd say What is my loyalty tier?")
        return self._audio_turn(None, spoken_text=text)

    def _cmd_live(self, arg: str):
        args = _parse(_live_parser(), arg)
        if args.close:
            if self.live is None:
                raise UsageError("no live stream is open; open one with %cescmd live")
            self.live.close()
            self.live, closed = None, self.live
            return closed
        if self.live is not None:
            self.live.close()
        fmt = {"audio_encoding": args.encoding, "sample_rate_hertz": args.rate}
        try:
            self.live = self._session().live(fmt, fmt)
        except ValueError as exc:
            raise UsageError(f"{exc}; e.g. %cescmd live --rate 16000 --encoding LINEAR16") from None
        self.live.open()
        return self.live

    def _cmd_history(self, arg: str):
        if arg:
            raise UsageError("%cescmd history takes no arguments; it shows the current session")
        return self._require_session().transcript

    def _cmd_save(self, arg: str) -> Note:
        args = _parse(_save_parser(), arg)
        session = self._require_session()
        path = Path(args.path).expanduser()
        if path.is_dir():
            raise UsageError(f"{path} is a folder: name a file in it, e.g. %cescmd save {path / 'trip.json'}")
        if not path.parent.is_dir():
            raise UsageError(f"no folder {path.parent}: create it first (%mkdir -p {path.parent}), "
                             "or save to an existing path like %cescmd save trip.json")
        try:
            path = session.save(path)
        except OSError as exc:
            raise UsageError(f"could not write {path} ({exc.strerror or exc}); save where you can write, "
                             "e.g. %cescmd save trip.json") from None
        return Note(f"saved {len(session.turns)} turn(s) to {args.path}; reload with %cescmd load {args.path}", path=path)

    def _cmd_load(self, arg: str):
        from .model import Transcript

        args = _parse(_load_parser(), arg)
        if not Path(args.path).is_file():
            raise UsageError(f"no transcript at {args.path}; write one with %cescmd save {args.path}")
        try:
            return Transcript.load(args.path)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _cmd_eval(self, arg: str):
        from .errors import CesError
        from .evals import EvalFileError, EvalRun, evaluate
        from .evals.junit import write_junit

        args = _parse(_eval_parser(), arg)
        if args.parallel < 1:
            raise UsageError("--parallel takes a number from 1 up, e.g. %cescmd eval evals/ --parallel 4")
        from pathlib import Path

        from .evals.compare import RunWithBaseline

        if args.baseline and not Path(args.baseline).expanduser().is_file():
            raise UsageError(f"{args.baseline}: no such file (--baseline takes a run saved with EvalRun.save or ces-nb eval --save)")
        client = self._client()
        app = args.app or self.app or None
        try:
            baseline = EvalRun.load(args.baseline) if args.baseline else None
            run = evaluate(args.paths, client=client, app=app, parallel=args.parallel, progress=False)
        except (EvalFileError, CesError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        comparison = run.compare(baseline) if baseline is not None else None
        if args.junit:
            write_junit(run, args.junit, latency_regressions=comparison.latency_regressions() if comparison is not None else None)
        return RunWithBaseline(run, comparison) if comparison is not None else run


# %cescmd? : the commands' own parsers, generated like the rest of the help.
CesMagics.cescmd.__doc__ += "\nCommands:\n\n" + "\n".join(make().format_help() for make in COMMANDS.values())


def _check_audio_file(path: str) -> None:
    """A UsageError unless soundfile can read the file, before any stream opens."""
    import soundfile

    try:
        soundfile.info(str(path))
    except Exception as exc:  # soundfile.LibsndfileError: "Error opening '…': Format not recognised."
        reason = str(exc).rsplit(": ", 1)[-1].rstrip(".")
        raise UsageError(f"{path} is not audio ({reason}); give a WAV, FLAC or OGG file, e.g. %ces --audio question.wav, "
                         "or speak text: %cescmd say What is my loyalty tier?") from None


def _tool_args(pairs: list[str]) -> dict[str, Any]:
    """key=value pairs; a value that parses as JSON is taken as JSON (numbers, true, objects)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"tool args are key=value pairs, got {pair!r}; e.g. %cescmd tool run get_flight_status flight_number=SW12")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


_QUESTION = re.compile(r"^(\s*)((?:[\w.\[\], ]+?\s*=\s*)?)%ces\s+(.*\S.*\?)\s*$")


def keep_questions(lines: list[str]) -> list[str]:
    """IPython reads a line ending in `?` as a help request (`%ces Can I check bags?` would
    look up `bags`). A %ces line is a message, so it is run as a magic call instead.
    `%ces?` alone still shows the help."""
    out = []
    for line in lines:
        match = _QUESTION.match(line)
        if match:
            indent, target, text = match.groups()
            line = f"{indent}{target}get_ipython().run_line_magic('ces', {text!r})\n"
        out.append(line)
    return out


_instances: dict[int, CesMagics] = {}


def client_tool(name: str):
    """Decorator for the %ces magics' sessions: `@ces_nb.client_tool("select_seat")`
    answers that tool's calls with the function (sync or async)."""
    from IPython import get_ipython

    shell = get_ipython()
    magics = _instances.get(id(shell)) if shell is not None else None
    if magics is None:
        raise RuntimeError("ces_nb.client_tool needs the extension: run %load_ext ces_nb first "
                           "(or register on a session: @session.client_tool(name))")
    return magics.tools.handler(name)


def load(ipython) -> None:
    magics = CesMagics(ipython)
    _instances[id(ipython)] = magics
    ipython.register_magics(magics)
    if keep_questions not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(keep_questions)


def unload(ipython) -> None:
    if keep_questions in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(keep_questions)
    magics = _instances.pop(id(ipython), None)
    if magics is not None:
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("ces", None)
            ipython.magics_manager.magics[kind].pop("cescmd", None)
        if magics in getattr(ipython, "configurables", []):
            ipython.configurables.remove(magics)
        if magics.client is not None:
            magics.client.close()
