"""Where the playback model's scripts come from: every way an app's conversations are written
down, read into the same `Script` records as `compile_example` makes of `examples/`.

* `examples/` in the export (CES Example resources).
* Few-shot blocks in agent instructions: an `<examples>` block (ADK's rendering, `<EXAMPLES>
  Begin few-shot … EXAMPLE 1: Begin example [user] … [model] ```tool_code name(k='v')```
  ```tool_outputs {…}``` [model] text End example … End few-shot <EXAMPLES>`, or hand-written
  `User:` / `Agent:` / `**User**:` lines, `<example>` tags); `[user]` / `[model]` lines
  anywhere in an instruction count too.
* Goldens in the cxas-scrapi YAML format (`<project>/evals/goldens/*.yaml` beside
  `<project>/cxas_app/<App>`, or any `--examples` file): `common_session_parameters`,
  `conversations[]` with `turns[]` of `user` (or `event`), `agent` (text or a list),
  `tool_calls[{action, args, output}]`. Args with `$matchType` markers play their plain value.
* CES Evaluation goldens (JSON or YAML, as the REST API and `cxas export` write them):
  `golden.turns[].steps[]` with `userInput`, `agentTransfer` and `expectation{toolCall,
  toolResponse, mockToolResponse, agentResponse, agentTransfer}`.
* ces_nb transcripts (`Transcript.save`, from the emulator or from real CES), Conversations
  in JSON, lists of SessionOutputs: record on CES, replay offline.

Each script keeps where it came from (`Script.source`), e.g.
`evals/goldens/billing.yaml#conversations[2]`. What cannot play (a call to a tool no agent
has, a file that is no script) is left out and reported like the export's other skipped
parts: logged, and listed in GetApp's `validation_errors`.

Order is fixed (examples, instructions, then files in name order), so matching stays
deterministic: on a tie the earlier script wins.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from google.protobuf import json_format

from .export import RESERVED_TOOLS, LoadedApp, toolset_tool_names
from .playback import PLACEHOLDER, TRANSFER_TOOL, Script, ScriptBuilder, adk_name, compile_example

log = logging.getLogger("ces_nb.emulator")

SCRIPT_SUFFIXES = (".yaml", ".yml", ".json")
# A golden turn with no user input starts the session: cxas-scrapi sends the welcome event.
WELCOME = "event: welcome"


def load_scripts(app: LoadedApp) -> list[Script]:
    """Every playback script of `app`. Problems are noted on the app (once, however often
    this runs) and the rest still plays."""
    names = _Names(app)
    notes: list[str] = []
    root = app.app.root_agent
    scripts = [compile_example(e, root, source=f"examples/{e.display_name}") for e in app.examples]
    if app.app.global_instruction:
        scripts += few_shot_scripts(app.app.global_instruction, root, "global instruction", names, notes)
    for display, agent in app.agents.items():
        scripts += few_shot_scripts(agent.instruction, display, f"instruction of agent {display!r}", names, notes)
    for source in app.script_sources:
        for path, label in script_files(source, notes):
            scripts += read_script_file(path, label, names, notes)
    for note in notes:
        if note not in app.skipped:
            log.warning("app %s: %s", app.app_id, note)
            app.skipped.append(note)
            app.app.validation_errors.append(note)
    log.info("app %s plays back %d scripts: %s", app.app_id, len(scripts), ", ".join(s.source or s.name for s in scripts))
    return scripts


def report_scripts(app: LoadedApp) -> None:
    """`--check`: where the playback model's scripts come from, on the app's load report: each
    source's conversations, and what of them cannot play and why."""
    from .load_report import APPROX, IGNORED, RUNS

    report = app.report
    before = len(app.skipped)
    scripts = load_scripts(app)
    by_source: dict[str, list[str]] = {}
    for script in scripts:
        source, _, _ = (script.source or script.name).partition("#")
        if not source.startswith("examples/"):  # the report has examples/ already
            by_source.setdefault(source, []).append(script.name)
    for source, played in by_source.items():
        named = [n for n in dict.fromkeys(played) if "#" not in n]  # few-shots are named by where they are
        report.add(source, RUNS, f"{len(played)} conversation(s) played back by the offline model", ", ".join(named))
    for note in app.skipped[before:]:
        source, _, what = note.partition("#") if "#" in note.split(":", 1)[0] else note.partition(": ")
        report.add(source, IGNORED, what or note)
    if not scripts:
        report.add("(playback scripts)", APPROX, "none found: the offline model answers every message by saying "
                   "it has no script for it", "add examples/, evals/goldens/*.yaml beside cxas_app/, a few-shot "
                   "block in an instruction, or --examples FILE")


def script_files(source: str, notes: list[str]) -> list[tuple[str, str]]:
    """(path, label) for a file, or for each .yaml/.yml/.json file in a folder (not its
    subfolders: cxas-scrapi keeps other things there), in name order."""
    path = Path(source)
    if path.is_file():
        return [(str(path), str(source))]
    if not path.is_dir():
        notes.append(f"{source}: no such file or folder of playback scripts")
        return []
    # The project's goldens are labelled as cxas-scrapi names them: evals/goldens/x.yaml.
    base = "evals/goldens" if path.name == "goldens" and path.parent.name == "evals" else str(source).rstrip("/\\")
    found = [(str(f), f"{base}/{f.name}") for f in sorted(path.iterdir()) if f.is_file() and f.suffix.lower() in SCRIPT_SUFFIXES]
    if not found:
        notes.append(f"{source}: no .yaml, .yml or .json files to play back")
    return found


class ScriptSourceError(ValueError):
    """An `--examples` path that is not there."""


def check_script_sources(paths: Iterable[str]) -> list[str]:
    """The paths, or ScriptSourceError naming the first that is neither a file nor a folder."""
    out = []
    for p in paths:
        if not os.path.exists(p):
            raise ScriptSourceError(f"--examples {p}: no such file or folder (give a golden .yaml, a CES evaluation "
                             f".json/.yaml, a ces_nb transcript .json, or a folder of them)")
        out.append(str(p))
    return out


def read_script_file(path: str, label: str, names: "_Names", notes: list[str]) -> list[Script]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{label}: cannot be read ({exc}); left out")
        return []
    try:
        data = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.lower().endswith(".json") else "YAML"
        notes.append(f"{label}: not valid {kind} ({_first_line(exc)}); left out")
        return []
    return scripts_of(data, label, names, notes, Path(path).stem)


def scripts_of(data: Any, label: str, names: "_Names", notes: list[str], stem: str = "") -> list[Script]:
    """Scripts from parsed file contents, whichever format they are in."""
    if isinstance(data, dict) and isinstance(data.get("conversations"), list):
        return _golden_dataset(data, label, names, notes)
    if isinstance(data, dict) and isinstance(data.get("evaluations"), list):
        return [s for i, e in enumerate(data["evaluations"]) for s in _evaluation(e, f"{label}#evaluations[{i}]", names, notes)]
    if isinstance(data, list) and data and all(isinstance(e, dict) and ("golden" in e or "scenario" in e) for e in data):
        return [s for i, e in enumerate(data) for s in _evaluation(e, f"{label}#[{i}]", names, notes)]
    if isinstance(data, dict) and ("golden" in data or "scenario" in data or _golden_turns(data.get("turns"))):
        return _evaluation(data, label, names, notes)
    if isinstance(data, dict) and _scrapi_turns(data.get("turns")):
        script = _golden_conversation(data, {}, label, names, notes)
        return [script] if script else []
    from ..model import Transcript

    try:
        transcript = Transcript.from_dict(data)
    except ValueError as exc:
        notes.append(f"{label}: not a golden (conversations[].turns[]), a CES evaluation (golden.turns[].steps[]) "
                     f"or a ces_nb transcript ({exc}); left out")
        return []
    return [_transcript(transcript, label, names, notes, stem)]


# -- names ------------------------------------------------------------------------------------

class _Names:
    """Tool and agent references as the sources spell them (display names, ADK identifiers,
    resource names such as projects/p/locations/l/apps/a/tools/<uuid>) -> display names."""

    def __init__(self, app: LoadedApp):
        self.app = app
        self.root = app.app.root_agent
        # Agents in a fixed order, root first: the first one that has a tool owns its calls.
        self.agents = [self.root, *(a for a in app.agents if a != self.root)]
        listed = {t for a in app.agents.values() for t in a.tools}
        # Toolset tools are called `<toolset>_<toolId>` in a conversation (toolsets.py).
        self.tools = [*app.tools, *app.toolset_operations, *(t for t in RESERVED_TOOLS if t in listed)]
        self.agent_tools = {d: {*a.tools, *toolset_tool_names(app, a)} for d, a in app.agents.items()}

    def agent(self, ref: Any) -> str | None:
        return self._find(ref, self.agents, lambda d: self.app.agents[d].name)

    def tool(self, ref: Any) -> str | None:
        found = self._find(ref, self.tools, lambda d: self.app.tools[d].name if d in self.app.tools else "")
        return found or self._toolset_tool(ref)

    def _toolset_tool(self, ref: Any) -> str | None:
        """A toolset's tool by its toolId alone (an OpenAPI operationId, an MCP tool's name), as
        goldens and few-shots write it, or `toolset/toolId` (a CES Evaluation's toolsetTool,
        whose toolset may be a resource name): the one operation with that id."""
        toolset, _, tool_id = str(ref or "").strip().rpartition("/")
        toolset = toolset.rsplit("/", 1)[-1]
        matches = [d for d, op in self.app.toolset_operations.items() if op.tool_id == tool_id and (
            not toolset or toolset == op.toolset
            or self.app.toolsets[op.toolset].name.rsplit("/", 1)[-1] == toolset)]
        return matches[0] if len(matches) == 1 else None

    def owner(self, tool: str, current: str) -> str | None:
        """The agent that makes a call: the current one if it has the tool, else the first that does."""
        if tool in self.agent_tools.get(current, ()):
            return current
        return next((a for a in self.agents if tool in self.agent_tools[a]), None)

    @staticmethod
    def _find(ref: Any, displays: list[str], resource) -> str | None:
        ref = str(ref or "").strip()
        if not ref:
            return None
        short = ref.rsplit("/", 1)[-1]
        for d in displays:
            if ref == d or short == d:
                return d
        for d in displays:
            name = resource(d)
            if name and (name == ref or name.rsplit("/", 1)[-1] == short):
                return d
        key = adk_name(short).lower()
        return next((d for d in displays if adk_name(d).lower() == key), None)


def _play_call(script: ScriptBuilder, names: _Names, tool_ref: Any, args: Any, where: str, notes: list[str]) -> bool:
    """A recorded call, made by the agent that has the tool (handing over to it first, as a
    real model would, when the current one has not). A call no agent can make is left out."""
    tool = names.tool(tool_ref)
    owner = names.owner(tool, script.agent) if tool else None
    if tool is None or owner is None:
        notes.append(f"{where}: tool {str(tool_ref)!r} is not a tool of any agent in the export; that call is left out")
        return False
    script.call(tool, plain(args) if isinstance(args, dict) else {}, agent=owner)
    script.agent = owner
    return True


def _play_transfer(script: ScriptBuilder, names: _Names, target_ref: Any, where: str, notes: list[str]) -> bool:
    target = names.agent(target_ref)
    if target is None:
        notes.append(f"{where}: transfer to {str(target_ref)!r}, which is not an agent in the export; left out")
        return False
    script.transfer(target)
    return True


def plain(value: Any) -> Any:
    """Golden args without their matching markers: `{$matchType, $matchValue, $originalValue}`
    or `{value, $matchType}` becomes the value itself (the original one when recorded)."""
    if isinstance(value, dict):
        if "$matchType" in value:
            for key in ("$originalValue", "value", "$matchValue"):
                if value.get(key) not in (None, ""):
                    return plain(value[key])
            return ""
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# -- cxas-scrapi goldens ----------------------------------------------------------------------

def _golden_dataset(data: dict, label: str, names: _Names, notes: list[str]) -> list[Script]:
    common = data.get("common_session_parameters") or {}
    scripts = []
    for i, conversation in enumerate(data["conversations"]):
        where = f"{label}#conversations[{i}]"
        if not isinstance(conversation, dict) or not isinstance(conversation.get("turns"), list):
            notes.append(f"{where}: a conversation needs a list of turns; left out")
            continue
        script = _golden_conversation(conversation, common, where, names, notes)
        if script:
            scripts.append(script)
    return scripts


def _golden_conversation(conversation: dict, common: dict, where: str, names: _Names, notes: list[str]) -> Script | None:
    # Session parameters (common_session_parameters, then the conversation's own) are what
    # the golden's client sends; here the client sends its own, so they are not played.
    name = str(conversation.get("conversation") or conversation.get("displayName") or where)
    script = ScriptBuilder(name, names.root, where)
    for j, turn in enumerate(conversation.get("turns") or []):
        at = f"{where}.turns[{j}]"
        if not isinstance(turn, dict):
            notes.append(f"{at}: a turn is a mapping of user, agent and tool_calls; left out")
            continue
        script.user(_golden_user(turn))
        calls = [c for c in (_golden_call(c) for c in turn.get("tool_calls") or []) if c]
        texts = _agent_texts(turn.get("agent"))
        # The YAML does not say whether the agent spoke before or after its calls: words that
        # quote a recorded output come after it, the rest first ("Let me look that up").
        outputs = [c[2] for c in calls if c[2] is not None]
        for text in texts:
            if not _quotes(text, outputs):
                script.say(text)
        for k, (action, args, _output, agent) in enumerate(calls):
            call_at = f"{at}.tool_calls[{k}]"
            if action == TRANSFER_TOOL:
                target = (args or {}).get("agent") or (args or {}).get("agent_name") or agent
                _play_transfer(script, names, target, call_at, notes)
                continue
            if _play_call(script, names, action, args, call_at, notes):
                script.responded()  # golden calls are made one after another
        for text in texts:
            if _quotes(text, outputs):
                script.say(text)
    built = script.build()
    return built if built.turns else None


def _golden_user(turn: dict) -> str:
    event = turn.get("event")
    if isinstance(event, dict):
        event = event.get("event")
    if event:
        return f"event: {event}"
    user = turn.get("user")
    if user is None or (isinstance(user, str) and not user.strip()):
        return WELCOME
    text = str(user).strip()
    m = re.fullmatch(r"<event>\s*(.*?)\s*</event>", text, re.S | re.I)
    return f"event: {m[1]}" if m else text


def _golden_call(item: Any) -> tuple[str, dict, Any, Any] | None:
    if isinstance(item, str):
        return item, {}, None, None
    if not isinstance(item, dict):
        return None
    action = item.get("action") or item.get("tool") or item.get("name")
    if not action:
        return None
    args = item.get("args") if item.get("args") is not None else item.get("arguments")
    return str(action), plain(args) if isinstance(args, dict) else {}, item.get("output"), item.get("agent")


def _agent_texts(agent: Any) -> list[str]:
    items = agent if isinstance(agent, list) else [agent]
    out = []
    for item in items:
        item = plain(item)
        if isinstance(item, str) and item.strip() and "# silent" not in item:
            out.append(item.strip())
    return out


def _quotes(text: str, outputs: list[Any]) -> bool:
    """Whether `text` reports a recorded output: it quotes one of its values, or has a
    `{placeholder}` named after one of its fields (filled from the live response)."""
    fields = {k for o in outputs if isinstance(o, dict) for k in o}
    if any(name.split(".", 1)[0] in fields for name in PLACEHOLDER.findall(text)):
        return True
    lower = text.lower()
    return any(v in lower for v in _scalars(outputs))


def _scalars(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _scalars(v)
    elif isinstance(value, list):
        for v in value:
            yield from _scalars(v)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        text = str(int(value)) if float(value).is_integer() else str(value)
        if len(text) >= 2:
            yield text
    elif isinstance(value, str) and len(value.strip()) >= 2:
        yield value.strip().lower()


def _scrapi_turns(turns: Any) -> bool:
    return (isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict)
            and bool({"user", "agent", "tool_calls", "event"} & set(turns[0]))
            and not {"outputs", "messages", "inputs", "steps"} & set(turns[0]))


def _golden_turns(turns: Any) -> bool:
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and "steps" in turns[0]


# -- CES Evaluation goldens -------------------------------------------------------------------

def _evaluation(data: Any, where: str, names: _Names, notes: list[str]) -> list[Script]:
    if not isinstance(data, dict):
        notes.append(f"{where}: an evaluation is a mapping with a golden; left out")
        return []
    golden = data.get("golden", data if "turns" in data else None)
    if not isinstance(golden, dict):
        if "scenario" in data:
            notes.append(f"{where}: a scenario evaluation scripts no turns (a simulated user plays it); left out")
        else:
            notes.append(f"{where}: an evaluation with no golden turns; left out")
        return []
    name = str(data.get("displayName") or data.get("display_name") or where)
    if _scrapi_turns(golden.get("turns")):  # cxas-scrapi also writes its own turns under golden:
        script = _golden_conversation({"conversation": name, "turns": golden["turns"]}, {}, where, names, notes)
        return [script] if script else []
    from google.cloud import ces_v1beta

    try:
        pb = json_format.ParseDict(golden, ces_v1beta.Evaluation.Golden.pb()(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        notes.append(f"{where}: does not match the CES Evaluation.Golden format ({_first_line(exc)}); left out")
        return []
    golden = json_format.MessageToDict(pb, preserving_proto_field_name=True)
    script = ScriptBuilder(name, names.root, where)
    for t, turn in enumerate(golden.get("turns") or []):
        for s, step in enumerate(turn.get("steps") or []):
            at = f"{where}.golden.turns[{t}].steps[{s}]"
            if "user_input" in step:
                _evaluation_input(script, step["user_input"])
            elif "agent_transfer" in step:
                _play_transfer(script, names, _transfer_target(step["agent_transfer"]), at, notes)
            elif "expectation" in step:
                _expectation(script, step["expectation"], names, at, notes)
    built = script.build()
    return [built] if built.turns else []


def _evaluation_input(script: ScriptBuilder, item: dict) -> None:
    if "text" in item:
        script.user(item["text"])
    elif "dtmf" in item:
        script.user(f"dtmf: {item['dtmf']}")
    elif "event" in item:
        script.user(f"event: {(item['event'] or {}).get('event', '')}")
    elif "tool_responses" in item:
        script.responded()
    elif "image" in item or "blob" in item:
        kind = "image" if "image" in item else "blob"
        script.user(f"[{kind} {(item[kind] or {}).get('mime_type', '')}]")
    # variables: the session parameters the golden's client sends; not played.


def _expectation(script: ScriptBuilder, expectation: dict, names: _Names, at: str, notes: list[str]) -> None:
    if "tool_call" in expectation:
        call = expectation["tool_call"]
        _play_call(script, names, call.get("display_name") or call.get("tool") or _toolset_tool(call), call.get("args") or {}, at, notes)
    elif "tool_response" in expectation or "mock_tool_response" in expectation:
        script.responded()
    elif "agent_transfer" in expectation:
        _play_transfer(script, names, _transfer_target(expectation["agent_transfer"]), at, notes)
    elif "agent_response" in expectation:
        for c, chunk in enumerate((expectation["agent_response"] or {}).get("chunks") or []):
            _agent_chunk(script, chunk, names, f"{at}.agent_response.chunks[{c}]", notes)


def _agent_chunk(script: ScriptBuilder, chunk: dict, names: _Names, at: str, notes: list[str]) -> None:
    if chunk.get("text") or chunk.get("transcript"):
        script.say(chunk.get("text") or chunk.get("transcript"))
    elif "payload" in chunk:
        script.payload(chunk["payload"] or {})
    elif "tool_call" in chunk:
        call = chunk["tool_call"]
        _play_call(script, names, call.get("display_name") or call.get("tool") or _toolset_tool(call), call.get("args") or {}, at, notes)
    elif "tool_response" in chunk:
        script.responded()
    elif "agent_transfer" in chunk:
        _play_transfer(script, names, _transfer_target(chunk["agent_transfer"]), at, notes)


def _transfer_target(transfer: dict) -> str:
    return (transfer or {}).get("display_name") or (transfer or {}).get("target_agent") or ""


def _toolset_tool(call: dict) -> str:
    ref = call.get("toolset_tool") or {}
    toolset, tool_id = str(ref.get("toolset") or ""), str(ref.get("tool_id") or "")
    return f"{toolset}/{tool_id}" if toolset and tool_id else tool_id


# -- ces_nb transcripts -----------------------------------------------------------------------

def _transcript(transcript, label: str, names: _Names, notes: list[str], stem: str) -> Script:
    """One session, turn by turn: what the user sent (the turn's inputs), then what the agents
    did (its diagnostic messages, or its outputs when the record has none)."""
    entry = names.agent(transcript.metadata.get("entry_agent")) or names.root
    name = transcript.session.rsplit("/", 1)[-1] or stem or label
    script = ScriptBuilder(name, entry, label)
    for t, turn in enumerate(transcript.turns):
        at = f"{label}#turns[{t}]"
        user_text = []
        for item in turn.inputs:
            if item.kind == "text":
                user_text.append(str(item.value))
            elif item.kind in ("dtmf", "event"):
                user_text.append(f"{item.kind}: {item.value}")
            elif item.kind in ("image", "blob"):
                user_text.append(f"[{item.kind} {item.value[0]}]")
            elif item.kind == "tool_responses":
                script.responded()
        if user_text:
            script.user(" ".join(user_text))
        agent_messages = [m for m in turn.messages if m.role.lower() != "user"]
        if agent_messages:
            for message in agent_messages:
                speaker = names.agent(message.role) if message.role.lower() not in ("agent", "model") else None
                if speaker and speaker != script.agent:
                    script.agent = speaker
                for c, chunk in enumerate(message.chunks):
                    _transcript_chunk(script, chunk, names, f"{at}.messages.chunks[{c}]", notes)
            continue
        for output in turn.outputs:
            if output.kind == "text":
                script.say(output.value)
            elif output.kind == "payload":
                script.payload(output.value)
            elif output.kind == "tool_calls":
                for call in output.value:
                    _play_call(script, names, call.display_name or call.tool, call.args, at, notes)
            elif output.kind == "end_session":
                _play_call(script, names, "end_session", output.value, at, notes)
    return script.build()


def _transcript_chunk(script: ScriptBuilder, chunk, names: _Names, at: str, notes: list[str]) -> None:
    if chunk.kind in ("text", "transcript"):
        if chunk.value:
            script.say(chunk.value)
    elif chunk.kind == "payload":
        script.payload(chunk.value)
    elif chunk.kind == "tool_call":
        call = chunk.value
        _play_call(script, names, call.display_name or call.tool, call.args, at, notes)
    elif chunk.kind == "tool_response":
        script.responded()
    elif chunk.kind == "agent_transfer":
        _play_transfer(script, names, chunk.value.get("display_name") or chunk.value.get("target_agent"), at, notes)


# -- few-shot blocks in instructions ----------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
# <examples> … </examples>, or ADK's <EXAMPLES> … <EXAMPLES> (the same tag closes it).
_EXAMPLES_BLOCK = re.compile(r"<examples\b[^>]*>(.*?)(?:</examples\s*>|<examples\s*>|\Z)", re.S | re.I)
_EXAMPLE_TAG = re.compile(r"<example\b[^>]*>(.*?)(?:</example\s*>|(?=<example\b)|\Z)", re.S | re.I)
_BEGIN_EXAMPLE = re.compile(r"^\s*begin example\s*$(.*?)(?:^\s*end example\s*$|\Z)", re.S | re.I | re.M)
_EXAMPLE_HEADING = re.compile(r"^\s*(?:#+\s*)?example\s*\d+\s*:?\s*$", re.I | re.M)
_USER_ROLES = "user|customer|caller|human"
_AGENT_ROLES = "model|agent|assistant|bot|ai"
_ROLES = f"{_USER_ROLES}|{_AGENT_ROLES}"
# [user] / [model] lines, and `User:` / `**Agent**:` / `**Agent:**` lines (a colon is needed,
# so prose that starts with "User" is not a speaker).
_SPEAKER = re.compile(
    rf"^\s*(?:\[(?P<bracketed>{_ROLES})\]\s*:?|(?:\*\*|__)?(?P<named>{_ROLES})(?:\*\*|__)?\s*:(?:\*\*|__)?)[ \t]*(?P<rest>.*)$",
    re.I,
)
_BRACKET_SPEAKER = re.compile(rf"^\s*\[(?:{_USER_ROLES}|{_AGENT_ROLES})\]\s*$", re.I | re.M)
_FENCE = re.compile(r"^\s*```\s*([\w-]*)\s*$")
_OUTPUT_LANGS = {"tool_outputs", "tool_output", "tool_response", "tool_result", "output", "outputs", "result", "json"}
_CALL_LANGS = {"tool_code", "tool_call", "tool_calls", "python", "py", ""}


def few_shot_scripts(instruction: str, agent: str, label: str, names: _Names, notes: list[str]) -> list[Script]:
    """The conversations of an instruction's few-shot examples, each played by `agent`."""
    if not instruction or not instruction.strip():
        return []
    text = _COMMENT.sub("", instruction)
    regions = [m[1] for m in _EXAMPLES_BLOCK.finditer(text)]
    if not regions and _BRACKET_SPEAKER.search(text):
        regions = [text]
    scripts = []
    for region in regions:
        for body in _split_examples(region):
            where = f"{label}#examples[{len(scripts)}]"
            script = _few_shot(body, agent, where, names, notes)
            if script is not None:
                scripts.append(script)
    return scripts


def _split_examples(region: str) -> list[str]:
    tagged = [m[1] for m in _EXAMPLE_TAG.finditer(region) if m[1].strip()]
    if tagged:
        return tagged
    begun = [m[1] for m in _BEGIN_EXAMPLE.finditer(region) if m[1].strip()]
    if begun:
        return begun
    parts = [p for p in _EXAMPLE_HEADING.split(region) if p.strip()]
    return parts or [region]


def _few_shot(body: str, agent: str, where: str, names: _Names, notes: list[str]) -> Script | None:
    segments = _segments(body)
    if not any(role == "agent" for role, _ in segments):
        return None
    script = ScriptBuilder(where, agent, where)
    for role, items in segments:
        texts = [v for kind, _lang, v in items if kind == "text" and v.strip()]
        if role == "user":
            if texts:
                script.user(" ".join(t.strip() for t in texts))
            elif items:  # ADK renders function responses as the user's part: [user] ```{...}```
                script.responded()
            continue
        for kind, lang, value in items:
            if kind == "text":
                if value.strip():
                    script.say(value.strip())
            else:
                _few_shot_code(script, lang, value, names, where, notes)
    built = script.build()
    return built if built.turns else None


def _segments(body: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(user|agent, [(text|code, lang, value)])], fenced code kept whole."""
    segments: list[tuple[str, list[tuple[str, str, str]]]] = []
    text: list[str] = []
    fence: tuple[str, list[str]] | None = None

    def items() -> list[tuple[str, str, str]]:
        return segments[-1][1] if segments else []

    def flush_text() -> None:
        if segments and text and "\n".join(text).strip():
            items().append(("text", "", "\n".join(text).strip()))
        text.clear()

    for line in body.splitlines():
        if fence is not None:
            if line.strip().startswith("```"):
                if segments:
                    items().append(("code", fence[0], "\n".join(fence[1])))
                fence = None
            else:
                fence[1].append(line)
            continue
        if m := _FENCE.match(line):
            flush_text()
            fence = (m[1].lower(), [])
            continue
        if m := re.match(r"^\s*```([\w-]*)\s+(.*?)```\s*$", line):  # ```tool_code f(x=1)``` on one line
            flush_text()
            if segments:
                items().append(("code", m[1].lower(), m[2]))
            continue
        if m := _SPEAKER.match(line):
            flush_text()
            role = (m["bracketed"] or m["named"]).lower()
            segments.append(("user" if re.fullmatch(_USER_ROLES, role) else "agent", []))
            if m["rest"].strip():
                text.append(m["rest"])
            continue
        if re.match(r"^\s*(?:end|begin) (?:example|few-shot)\s*$", line, re.I):
            continue
        text.append(line)
    flush_text()
    if fence is not None and segments:  # an unclosed fence runs to the end
        items().append(("code", fence[0], "\n".join(fence[1])))
    return segments


def _few_shot_code(script: ScriptBuilder, lang: str, code: str, names: _Names, where: str, notes: list[str]) -> None:
    if lang in _OUTPUT_LANGS:
        script.responded()
        return
    if lang not in _CALL_LANGS:
        return
    calls = _parse_calls(code)
    if calls is None:
        if not lang:
            script.responded()  # ADK writes a tool's output in a plain ``` block too
        return
    for name, args in calls:
        if name == TRANSFER_TOOL:
            _play_transfer(script, names, args.get("agent_name") or args.get("agent"), where, notes)
        else:
            _play_call(script, names, name, args, where, notes)


def _parse_calls(code: str) -> list[tuple[str, dict]] | None:
    """`name(k='v')` lines (also `print(...)`-wrapped, `default_api.name(...)`, `x = name(...)`)."""
    try:
        tree = ast.parse(code.strip())
    except SyntaxError:
        return None
    calls = []
    for stmt in tree.body:
        node = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
        while isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" and len(node.args) == 1:
            node = node.args[0]
        if not isinstance(node, ast.Call):
            return None
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if not name:
            return None
        calls.append((name, {kw.arg: _arg_value(kw.value) for kw in node.keywords if kw.arg}))
    return calls or None


def _arg_value(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        pass
    if isinstance(node, ast.Name) and node.id.lower() in ("true", "false", "null", "none"):
        return {"true": True, "false": False}.get(node.id.lower())
    return ast.unparse(node)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
