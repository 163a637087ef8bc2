"""What of an export the emulator runs, runs approximately, or ignores, file by file.

`build_report` reads the export again next to what `load_export` made of it: every key of
every app, agent, tool, toolset, guardrail and example file is checked against the CES
proto (an unknown key is reported, never silently dropped), and every feature the emulator
cannot run offline says why. `ces-nb emulator --check --app DIR` prints it; the emulator
logs it at start-up, and GetApp's `validation_errors` carries its non-"runs" lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from google.cloud import ces_v1
from google.protobuf import descriptor

from .export_layout import object_files

RUNS, APPROX, IGNORED = "runs", "runs approximately", "ignored"
_ORDER = {RUNS: 0, APPROX: 1, IGNORED: 2}


@dataclass
class Entry:
    file: str
    status: str
    what: str
    why: str = ""

    def line(self) -> str:
        return f"{self.file}: {self.status}: {self.what}" + (f" ({self.why})" if self.why else "")


@dataclass
class LoadReport:
    app: str
    source: str
    entries: list[Entry] = field(default_factory=list)
    fatal: str = ""  # set when the export cannot load at all

    def add(self, file: str, status: str, what: str, why: str = "") -> None:
        self.entries.append(Entry(file, status, what, why))

    def problems(self) -> list[Entry]:
        return [e for e in self.entries if e.status != RUNS]

    def counts(self) -> dict[str, int]:
        out = {RUNS: 0, APPROX: 0, IGNORED: 0}
        for e in self.entries:
            out[e.status] += 1
        return out

    def text(self) -> str:
        lines = [f"CES export {self.source}" + (f" (app {self.app})" if self.app else "")]
        if self.fatal:
            lines.append(f"  cannot load: {self.fatal}")
            return "\n".join(lines)
        by_file: dict[str, list[Entry]] = {}
        for e in self.entries:
            by_file.setdefault(e.file, []).append(e)
        for file in sorted(by_file, key=lambda f: (f.count("/") > 0, f)):
            lines.append(f"  {file}")
            for e in sorted(by_file[file], key=lambda e: _ORDER[e.status]):
                lines.append(f"    {e.status + ':':<20} {e.what}" + (f" — {e.why}" if e.why else ""))
        c = self.counts()
        lines.append(f"  {c[RUNS]} run, {c[APPROX]} run approximately, {c[IGNORED]} ignored")
        return "\n".join(lines)


# -- unknown keys -----------------------------------------------------------------------

_OPAQUE = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any"}


def unknown_keys(data: Any, message: descriptor.Descriptor, path: str = "") -> list[str]:
    """Dotted paths of the keys in `data` that `message` has no field for."""
    if not isinstance(data, dict):
        return []
    fields = {}
    for f in message.fields:
        fields[f.name] = f
        fields[f.json_name] = f
    out = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        f = fields.get(key)
        if f is None:
            out.append(where)
            continue
        if f.type != descriptor.FieldDescriptor.TYPE_MESSAGE or f.message_type.full_name in _OPAQUE:
            continue
        sub = f.message_type
        if sub.GetOptions().map_entry:
            value_field = sub.fields_by_name["value"]
            if value_field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and isinstance(value, dict):
                for k, v in value.items():
                    out += unknown_keys(v, value_field.message_type, f"{where}.{k}")
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            out += unknown_keys(item, sub, f"{where}[{i}]" if isinstance(value, list) else where)
    return out


# -- the report ---------------------------------------------------------------------------

_APP_FIELDS = {
    "displayName": (RUNS, ""), "description": (RUNS, ""), "rootAgent": (RUNS, ""),
    "globalInstruction": (APPROX, "given to the model; the offline playback model follows examples, not instructions"),
    "variableDeclarations": (RUNS, "session variables with their defaults"),
    "guardrails": (RUNS, "checked on every turn (LLM-judged ones are not evaluated offline)"),
    "modelSettings": (IGNORED, "the playback model (or --model) answers instead"),
    "languageSettings": (APPROX, "picks the voice's language; text turns are not translated"),
    "timeZoneSettings": (IGNORED, "sessions use the time_zone the client sends"),
    "audioProcessingConfig": (APPROX, "voice runs on the emulator's own offline speech"),
    "loggingSettings": (IGNORED, "conversations stay in the emulator's store; nothing is exported"),
    "errorHandlingSettings": (IGNORED, "not applied offline"),
    "toolExecutionMode": (IGNORED, "ADK's own tool execution order applies"),
    "evaluationMetricsThresholds": (IGNORED, "the emulator runs no evaluations"),
    "dataStoreSettings": (IGNORED, "data stores are searched offline from tools/<name>/documents/"),
    "defaultChannelProfile": (IGNORED, "not applied offline"),
    "predefinedVariableDeclarations": (IGNORED, "not filled offline"),
    "metadata": (IGNORED, "kept on the App only"),
    "clientCertificateSettings": (IGNORED, "the emulator serves plaintext gRPC"),
    "vpcScSettings": (IGNORED, "no VPC-SC offline"),
    "pinned": (IGNORED, ""), "locked": (IGNORED, ""),
}
_OUTPUT_ONLY = {"name", "createTime", "updateTime", "etag", "deploymentCount", "validationErrors", "generatedSummary"}
_AGENT_CALLBACKS = ("beforeAgentCallbacks", "afterAgentCallbacks", "beforeModelCallbacks",
                    "afterModelCallbacks", "beforeToolCallbacks", "afterToolCallbacks")
_TOOL_KINDS = {
    "clientFunction": (RUNS, "the turn pauses for the client's tool response"),
    "pythonFunction": (RUNS, "its code runs in the emulator's sandboxed python workers"),
    "dataStoreTool": (APPROX, "searches the documents under tools/<name>/documents/ (bm25), not Vertex AI Search"),
    "googleSearchTool": (APPROX, "searches the export's own documents offline"),
    "systemTool": (RUNS, ""),
    "widgetTool": (APPROX, "answers with the widget's payload (type, uiConfig and the call's data)"),
}


def build_report(files, loaded) -> "LoadReport":
    """The report for a loaded export. `files` is export._ExportFiles."""
    report = LoadReport(app=loaded.app_id, source=loaded.source)
    parsed: dict[str, Any] = {}
    for rel in files.names():
        if rel.rsplit(".", 1)[-1] in ("json", "yaml", "yml"):
            try:
                text = files.read_text(rel)
                parsed[rel] = json.loads(text) if rel.endswith(".json") else yaml.safe_load(text)
            except Exception:  # noqa: BLE001 — load_export has reported it already
                parsed[rel] = None
    referenced = _referenced_paths(parsed, files)
    handled: set[str] = set()

    app_rel = files.first("app.yaml", "app.yml", "app.json")
    handled.add(app_rel)
    _report_app(report, app_rel, parsed.get(app_rel) or {})
    for rel in _objects(files, "agents"):
        handled.add(rel)
        _report_agent(report, rel, parsed.get(rel), loaded)
    for rel in _objects(files, "tools"):
        handled.add(rel)
        _report_tool(report, rel, parsed.get(rel), loaded)
    for rel in _objects(files, "toolsets"):
        handled.add(rel)
        _report_toolset(report, rel, parsed.get(rel), loaded)
    for rel in _objects(files, "guardrails"):
        handled.add(rel)
        _report_plain(report, rel, parsed.get(rel), ces_v1.Guardrail, _guardrail_status(parsed.get(rel)))
        _report_guardrail_action(report, rel, parsed.get(rel))
    for rel in _objects(files, "examples"):
        handled.add(rel)
        _report_plain(report, rel, parsed.get(rel), ces_v1.Example, (RUNS, "played back by the offline model"))
    env_rel = files.first("environment.json")
    if env_rel:
        handled.add(env_rel)
        _report_environment(report, env_rel, loaded)
    owners = _owners(files, parsed)
    for note in loaded.skipped:  # what load_export itself left out, under its file when it names one
        head = note.split(":", 1)[0]
        m = re.match(r"^(agent|tool|example|toolset) '([^']+)'", note)
        if head in files.names():
            report.add(head, IGNORED, note.split(": ", 1)[-1])
        elif m and (m[1], m[2]) in owners:
            report.add(owners[(m[1], m[2])], IGNORED, note.split(": ", 1)[-1])
        else:
            report.add("(references)", IGNORED, note)
    for rel in files.names():
        if rel in handled or rel in referenced or "/documents/" in rel:
            continue
        top = rel.split("/", 1)[0]
        if top == "pythonEnvFiles":
            report.add(rel, IGNORED, "python environment file",
                       "not installed: tool code imports only what the emulator's Python has")
        elif top in ("evaluations", "evaluationExpectations", "evaluationDatasets"):
            report.add(rel, APPROX if rel.endswith((".json", ".yaml", ".yml")) else IGNORED, "evaluation",
                       "not run as an evaluation; the playback model may use its conversation (ces-nb emulator --examples)")
        elif rel.endswith(".txt") and rel.rsplit("/", 1)[-1] in ("instruction.txt", "global_instruction.txt"):
            report.add(rel, IGNORED, "instruction file no agent or app references")
        else:
            report.add(rel, IGNORED, "file not part of the CES export format the emulator knows")
    return report


def _owners(files, parsed: dict) -> dict[tuple[str, str], str]:
    """(kind, displayName) -> the file that defines it."""
    out = {}
    for kind, folder in (("agent", "agents"), ("tool", "tools"), ("example", "examples"), ("toolset", "toolsets")):
        for rel in _objects(files, folder):
            data = parsed.get(rel)
            name = (data.get("displayName") if isinstance(data, dict) else None) or PurePosixPath(rel).stem
            out[(kind, name)] = rel
    return out


def _objects(files, folder: str) -> list[str]:
    return object_files(files, folder)


def _referenced_paths(parsed: dict, files) -> set[str]:
    names = set(files.names())
    out: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node.strip().lstrip("./") in names:
            out.add(node.strip().lstrip("./"))

    for data in parsed.values():
        walk(data)
    return out


def _unknown(report: LoadReport, rel: str, data: Any, cls) -> None:
    for key in unknown_keys(data, cls.pb().DESCRIPTOR):
        report.add(rel, IGNORED, f"unknown key {key!r}", f"not a field of CES {cls.__name__}")


def _report_app(report: LoadReport, rel: str, data: dict) -> None:
    if not isinstance(data, dict):
        return
    _unknown(report, rel, data, ces_v1.App)
    for key, value in data.items():
        if key in _OUTPUT_ONLY or value in (None, [], {}, ""):
            continue
        status, why = _guardrail_status() if key == "guardrails" else _APP_FIELDS.get(key, (None, ""))
        if status:
            report.add(rel, status, key, why)


def _report_agent(report: LoadReport, rel: str, data: Any, loaded) -> None:
    if not isinstance(data, dict):
        return
    _unknown(report, rel, data, ces_v1.Agent)
    name = data.get("displayName") or PurePosixPath(rel).stem
    agent = loaded.agents.get(name)
    report.add(rel, RUNS, f"agent {name!r}" + (" (root)" if name == loaded.app.root_agent else ""))
    if data.get("instruction"):
        report.add(rel, APPROX, "instruction", "given to the model; the offline playback model follows examples")
    if data.get("tools"):
        report.add(rel, RUNS, f"tools: {', '.join(map(str, data['tools']))}")
    if data.get("childAgents"):
        report.add(rel, RUNS, f"childAgents: {', '.join(map(str, data['childAgents']))}", "sub-agents, reached by transfer")
    for ref in data.get("toolsets") or []:
        if not isinstance(ref, dict):
            continue
        toolset = str(ref.get("toolset", "")).rsplit("/", 1)[-1]
        ids = ref.get("toolIds") or []
        if toolset in loaded.toolsets:
            has_fake = bool(loaded.toolsets[toolset].tool_fake_config.code_block.python_code)
            report.add(rel, APPROX if has_fake else IGNORED,
                       f"toolset {toolset!r}" + (f" tools {', '.join(ids)}" if ids else " (all its tools)"),
                       "answered from the toolset's fake code offline" if has_fake
                       else "no fake code: its calls answer with an error offline")
    for key in _AGENT_CALLBACKS:
        if data.get(key):
            report.add(rel, RUNS, f"{key} ({len(data[key])})", "run in the python sandbox at their documented points, in order")
    if data.get("guardrails"):
        report.add(rel, RUNS, f"guardrails: {', '.join(map(str, data['guardrails']))}", "checked on this agent's turns")
    if data.get("modelSettings"):
        report.add(rel, IGNORED, "modelSettings", "the playback model (or --model) answers instead")
    for i, rule in enumerate((agent.transfer_rules if agent is not None else [])):
        status, why = transfer_rule_status(rule)
        target = rule.child_agent.rsplit("/", 1)[-1]
        direction = ces_v1.TransferRule.Direction(rule.direction).name
        report.add(rel, status, f"transferRules[{i}] to {target!r} ({direction})", why)
    if isinstance(data.get("remoteDialogflowAgent"), dict):
        report.add(rel, IGNORED, "remoteDialogflowAgent", "a Dialogflow CX agent cannot run offline")


# Guardrail kinds a model judges: listed, but not evaluated offline (no model to ask).
_LLM_GUARDRAILS = ("llmPromptSecurity", "llmPolicy", "modelSafety")


def _guardrail_status(data: Any = None) -> tuple[str, str]:
    if isinstance(data, dict) and data.get("enabled") is not True:
        return IGNORED, "enabled is not true: CES does not apply it, nor does the emulator"
    kinds = [k for k in _LLM_GUARDRAILS if isinstance(data, dict) and k in data]
    if kinds:
        return IGNORED, f"{kinds[0]} is judged by a model: not evaluated offline (its Guardrail span says evaluated=false)"
    return RUNS, "checked on every turn: code callbacks in the sandbox, keyword lists, RE2 regexes"


# What a TRIGGER does offline, by the guardrail's action (guardrails.py).
_GUARDRAIL_ACTIONS = {
    "respondImmediately": (RUNS, "answers its first enabled response and ends the turn"),
    "transferAgent": (APPROX, "hands over at the model stages; at the agent stages the turn just ends"),
    "generativeAnswer": (APPROX, "needs a model: offline the turn ends with a fixed sentence"),
}


def _report_guardrail_action(report: LoadReport, rel: str, data: Any) -> None:
    action = data.get("action") if isinstance(data, dict) else None
    for kind in action if isinstance(action, dict) else ():
        status, why = _GUARDRAIL_ACTIONS.get(kind, (IGNORED, "an action the emulator does not know"))
        report.add(rel, status, f"action {kind}", why)


def transfer_rule_status(rule: ces_v1.TransferRule) -> tuple[str, str]:
    kind = ces_v1.TransferRule.pb(rule).WhichOneof("rule_type")
    if kind == "deterministic_transfer":
        cond = ces_v1.TransferRule.DeterministicTransfer.pb(rule.deterministic_transfer).WhichOneof("condition_type")
        if cond == "expression_condition":
            from .toolsets import parse_condition

            expr = rule.deterministic_transfer.expression_condition.expression
            if parse_condition(expr) is not None:
                return APPROX, f"condition {expr!r} is checked on the session variables before the agent's turn"
            return IGNORED, f"condition {expr!r} uses more than the emulator evaluates (var == / != / < / > literal, &&, ||, !)"
        return IGNORED, "python code conditions are not run offline"
    if kind == "disable_planner_transfer":
        return IGNORED, "the playback model transfers only as the examples do; there is no planner to restrain"
    return IGNORED, "no rule type set"


def _report_tool(report: LoadReport, rel: str, data: Any, loaded) -> None:
    if not isinstance(data, dict):
        return
    _unknown(report, rel, data, ces_v1.Tool)
    name = data.get("displayName") or PurePosixPath(rel).stem
    tool = loaded.tools.get(name)
    if tool is None:
        return
    kind = loaded.tool_kind(tool)
    camel = _camel(kind)
    has_fake = bool(tool.tool_fake_config.code_block.python_code)
    if camel in _TOOL_KINDS:
        status, why = _TOOL_KINDS[camel]
        if kind == "system_tool" and tool.system_tool.name != "end_session":
            status, why = IGNORED, f"system tool {tool.system_tool.name!r} is not run offline"
        report.add(rel, status, f"{camel} {name!r}", why)
    elif has_fake:
        report.add(rel, APPROX, f"{camel or 'tool'} {name!r}",
                   "no network offline: answers from its fake code with use_tool_fakes or toolFakeConfig.enableFakeMode, "
                   "else with an error")
    else:
        report.add(rel, IGNORED, f"{camel or 'tool'} {name!r}",
                   "needs Google Cloud or the network; calls answer with an error (add toolFakeConfig fake code to run it offline)")
    if has_fake:
        report.add(rel, RUNS, "toolFakeConfig", "fake code runs with use_tool_fakes or enableFakeMode")
    _report_call_settings(report, rel, data)


def _report_call_settings(report: LoadReport, rel: str, data: dict) -> None:
    """A tool's or toolset's `timeout` and `executionType`."""
    if data.get("timeout"):
        report.add(rel, RUNS, f"timeout {data['timeout']}", "each call's wall-time limit (capped by --tool-max-timeout)")
    kind = data.get("executionType")
    if kind and kind not in ("SYNCHRONOUS", "EXECUTION_TYPE_UNSPECIFIED"):
        report.add(rel, IGNORED, f"executionType {kind}", "calls run synchronously offline: the turn waits for each answer")
    elif kind:
        report.add(rel, RUNS, f"executionType {kind}")


def _report_toolset(report: LoadReport, rel: str, data: Any, loaded) -> None:
    if not isinstance(data, dict):
        return
    _unknown(report, rel, data, ces_v1.Toolset)
    name = data.get("displayName") or PurePosixPath(rel).stem
    toolset = loaded.toolsets.get(name)
    if toolset is None:
        return
    from .toolsets import toolset_kind

    kind = _camel(toolset_kind(toolset))
    ops = [op for op in loaded.toolset_operations.values() if op.toolset == name]
    has_fake = bool(toolset.tool_fake_config.code_block.python_code)
    listed = ", ".join(op.display_name for op in ops) or "none"
    if ops and has_fake:
        report.add(rel, APPROX, f"{kind} {name!r}: tools {listed}",
                   "no network offline: answered by its fake code with use_tool_fakes or toolFakeConfig.enableFakeMode")
    elif ops:
        report.add(rel, IGNORED, f"{kind} {name!r}: tools {listed}",
                   "no network offline and no fake code: calls answer with an error (add toolFakeConfig, or mock them in ExecuteTool)")
    else:
        report.add(rel, IGNORED, f"{kind or 'toolset'} {name!r}", "offers no tools offline")
    for note in loaded.toolset_notes.get(name, []):
        report.add(rel, APPROX if "environment.json" in note or "session variables" in note else IGNORED, note)
    auth = data.get("openApiToolset", data.get("mcpToolset", {})) or {}
    if isinstance(auth, dict) and auth.get("apiAuthentication"):
        report.add(rel, IGNORED, "apiAuthentication", "no calls leave the emulator, so no credentials are used")
    _report_call_settings(report, rel, data)


def _report_plain(report: LoadReport, rel: str, data: Any, cls, status: tuple[str, str]) -> None:
    if not isinstance(data, dict):
        return
    _unknown(report, rel, data, cls)
    name = data.get("displayName") or PurePosixPath(rel).stem
    report.add(rel, status[0], f"{cls.__name__.lower()} {name!r}", status[1])


def _report_environment(report: LoadReport, rel: str, loaded) -> None:
    from .toolsets import substitute_env

    env = loaded.environment or {}
    for section, pool in (("toolsets", loaded.toolsets), ("tools", loaded.tools)):
        for name, overrides in (env.get(section) or {}).items():
            if name not in pool:
                report.add(rel, IGNORED, f"{section}.{name}", f"no {section[:-1]} of that displayName in the export")
                continue
            notes: list[str] = []
            substitute_env({}, overrides, f"{section}/{name}", notes)
            report.add(rel, RUNS, f"{section}.{name}: {', '.join(sorted(overrides)) if isinstance(overrides, dict) else 'value'}",
                       "substituted for `$env_var` in the export")
    for key in env:
        if key not in ("toolsets", "tools"):
            report.add(rel, IGNORED, f"{key}", "the emulator substitutes only toolsets and tools values")


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)
