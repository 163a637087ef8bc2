"""Load a CES app export (folder or zip) into the official ces_v1 types.

The layout is the one in the CES docs' "Export format reference":

    app.yaml|json
    global_instruction.txt            (optional, referenced by app.globalInstruction)
    agents/<name>/<name>.json|yaml    (instruction: agents/<name>/instruction.txt)
    tools/<name>/<name>.json|yaml     (pythonFunction.pythonCode: tools/<name>/python_function/python_code.py)
    examples/<name>/<name>.json|yaml
    toolsets/<name>/<name>.json|yaml  (openApiToolset.openApiSchema: toolsets/<name>/open_api_toolset/open_api_schema.yaml)
    guardrails/<name>/<name>.json|yaml
    environment.json                  (values for `$env_var` in toolsets and tools, by displayName)

Cross-references use displayName; a folder's name need not be it (console exports name
resource folders by UUID). JSON and YAML are equally valid. Toolsets become one tool per
operation (toolsets.py). `load_report.build_report` says, file by file, what runs, what runs
approximately and what is ignored, unknown keys included (`ces-nb emulator --check`).

Besides ``examples/``, the playback model plays back goldens: an export pulled into a
cxas-scrapi project (``cxas pull --target-dir <project>/cxas_app/``, so the app is
``<project>/cxas_app/<App>``) has its goldens in ``<project>/evals/goldens/*.yaml``; they
are listed in ``script_sources`` (and read by ``scripts.py``).

One emulator extension: a data-store tool's documents ship under
``tools/<name>/documents/`` (Markdown or text files, with an optional
``index.yaml|json`` giving each file's title and uri), because the real data
store lives in Vertex AI Search and is not part of an export.

Only a missing or invalid ``app.*`` or root agent is fatal. Everything else that
cannot run offline is loaded as far as possible and reported in ``skipped``
(and in the ``validation_errors`` that GetApp returns).
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from google.cloud import ces_v1
from google.protobuf import json_format

from .export_layout import object_files
from .load_report import LoadReport, build_report

log = logging.getLogger("ces_nb.emulator")

RESERVED_TOOLS = ("end_session", "transfer_to_agent", "customize_response")
# Keys whose string value is a path to a file in the export, inlined on load.
FILE_REFERENCE_KEYS = {"instruction", "globalInstruction", "pythonCode", "openApiSchema"}
# Tool kinds the emulator can run offline; any other kind is stood in for.
RUNNABLE_TOOL_KINDS = {
    "client_function",
    "python_function",
    "data_store_tool",
    "google_search_tool",
    "system_tool",
    "widget_tool",
}


def demo_app_path() -> Path:
    """The SkyWay demo app that ships in the package (the emulator's default --app)."""
    return Path(__file__).resolve().parent.parent / "demo_app" / "skyway"


class ExportError(ValueError):
    """The export cannot be loaded at all; the message names the file."""


@dataclass
class Document:
    """One document of a data-store tool's offline corpus."""

    title: str
    uri: str
    text: str


@dataclass
class LoadedApp:
    app_id: str
    app: ces_v1.App
    agents: dict[str, ces_v1.Agent]
    tools: dict[str, ces_v1.Tool]
    examples: list[ces_v1.Example]
    documents: dict[str, list[Document]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    source: str = ""
    # Files or folders of more playback scripts (goldens, evaluations, transcripts): the
    # project's evals/goldens, and `ces-nb emulator --examples PATH`.
    script_sources: list[str] = field(default_factory=list)
    # toolsets/ by displayName, and their tools by the name a conversation calls them
    # (`<toolset>_<toolId>`, see toolsets.py); guardrails/ and environment.json as loaded.
    toolsets: dict[str, ces_v1.Toolset] = field(default_factory=dict)
    toolset_operations: dict[str, Any] = field(default_factory=dict)
    toolset_notes: dict[str, list[str]] = field(default_factory=dict)
    guardrails: dict[str, ces_v1.Guardrail] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    # What runs, runs approximately or is ignored, file by file (load_report.LoadReport).
    report: Any = None

    @property
    def root_agent(self) -> ces_v1.Agent:
        return self.agents[self.app.root_agent]

    def tool_kind(self, tool: ces_v1.Tool) -> str:
        return ces_v1.Tool.pb(tool).WhichOneof("tool_type") or ""


class _ExportFiles:
    """Uniform read access to an export folder or zip, by relative posix path."""

    def __init__(self, path: str):
        import os

        self.path = path
        self._files: dict[str, bytes | str] = {}
        if os.path.isdir(path):
            for dirpath, _dirs, names in os.walk(path):
                for name in names:
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    self._files[rel] = full
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                entries = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
            # An export zip holds one root directory named after the app.
            prefix = _common_root(list(entries))
            self._files = {n[len(prefix):]: data for n, data in entries.items()}
        else:
            raise ExportError(f"{path}: not a folder or a zip file; pass an app export")

    def exists(self, rel: str) -> bool:
        return rel in self._files

    def read_bytes(self, rel: str) -> bytes:
        src = self._files[rel]
        if isinstance(src, bytes):
            return src
        with open(src, "rb") as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def names(self) -> list[str]:
        return sorted(self._files)

    def first(self, *candidates: str) -> str | None:
        return next((c for c in candidates if c in self._files), None)


def _common_root(names: list[str]) -> str:
    if any(n in ("app.yaml", "app.json", "app.yml") for n in names):
        return ""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1:
        top = tops.pop()
        if any(n.startswith(top + "/app.") for n in names):
            return top + "/"
    return ""


def _parse_document(files: _ExportFiles, rel: str) -> Any:
    text = files.read_text(rel)
    try:
        if rel.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ExportError(f"{rel}: not valid {'JSON' if rel.endswith('.json') else 'YAML'}: {exc}") from exc


def _inline_file_references(files: _ExportFiles, value: Any) -> Any:
    """Replace `instruction: agents/x/instruction.txt`-style paths with file contents."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in FILE_REFERENCE_KEYS and isinstance(item, str) and files.exists(item.strip().lstrip("./")):
                out[key] = files.read_text(item.strip().lstrip("./"))
            else:
                out[key] = _inline_file_references(files, item)
        return out
    if isinstance(value, list):
        return [_inline_file_references(files, v) for v in value]
    return value


def _to_message(cls, data: dict, rel: str):
    try:
        pb = json_format.ParseDict(data, cls.pb()(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ExportError(f"{rel}: does not match the CES {cls.__name__} format: {exc}") from exc
    return cls.wrap(pb)


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug or "app"


def load_export(path: str, app_id: str | None = None, *, log_report: bool = True) -> LoadedApp:
    """Load an export. Raises ExportError only for a missing/invalid app file or root agent.
    `log_report=False` keeps the load report out of the log (a `--workers` worker: its
    supervisor logged it once)."""
    files = _ExportFiles(str(path))
    app_rel = files.first("app.yaml", "app.yml", "app.json")
    if app_rel is None:
        raise ExportError(f"{path}: no app.yaml or app.json at the export root; is this a CES app export?")
    app_data = _parse_document(files, app_rel)
    if not isinstance(app_data, dict):
        raise ExportError(f"{app_rel}: expected a mapping of app fields, got {type(app_data).__name__}")
    app_data = _inline_file_references(files, app_data)
    app = _to_message(ces_v1.App, app_data, app_rel)
    if not app.root_agent:
        raise ExportError(f"{app_rel}: rootAgent is missing; set it to the root agent's displayName")

    skipped: list[str] = []
    environment = _load_environment(files, skipped)
    agents = _load_objects(files, "agents", ces_v1.Agent, skipped)
    if app.root_agent not in agents:
        known = ", ".join(sorted(agents)) or "none"
        problems = "".join(f"; {note}" for note in skipped if note.startswith("agents/"))
        raise ExportError(
            f"{app_rel}: rootAgent {app.root_agent!r} names no agent under agents/ "
            f"(agents loaded: {known}){problems}"
        )
    tools = _load_objects(files, "tools", ces_v1.Tool, skipped, environment.get("tools"))
    examples = list(_load_objects(files, "examples", ces_v1.Example, skipped).values())

    loaded = LoadedApp(
        app_id=app_id or slugify(app.name.rsplit("/", 1)[-1] or app.display_name or PurePosixPath(str(path)).stem),
        app=app,
        agents=agents,
        tools=tools,
        examples=examples,
        skipped=skipped,
        source=str(path),
        script_sources=project_goldens(str(path)),
    )
    loaded.environment = environment
    _load_toolsets_and_guardrails(files, loaded)
    _check_references(loaded)
    _load_documents(files, loaded)
    loaded.report = build_report(files, loaded)
    if log_report:
        level = logging.WARNING if loaded.report.counts()["ignored"] else logging.INFO
        log.log(level, "app %s load report (ces-nb emulator --check prints it):\n%s", loaded.app_id, loaded.report.text())
        for note in loaded.skipped:
            log.warning("app %s: %s", loaded.app_id, note)
    loaded.app.validation_errors.extend(loaded.skipped)
    loaded.app.validation_errors.extend(e.line() for e in loaded.report.problems() if e.line() not in loaded.skipped)
    return loaded


def project_goldens(path: str) -> list[str]:
    """`<project>/evals/goldens` for an app at `<project>/cxas_app/<App>` (the cxas-scrapi
    project layout), when that folder exists."""
    import os

    app_dir = os.path.abspath(path)
    parent = os.path.dirname(app_dir)
    if os.path.basename(parent) != "cxas_app":
        return []
    goldens = os.path.join(os.path.dirname(parent), "evals", "goldens")
    return [goldens] if os.path.isdir(goldens) else []


def _load_objects(files: _ExportFiles, folder: str, cls, skipped: list[str], environment: dict | None = None) -> dict:
    """`folder/<name>/<name>.*` as `cls` messages by displayName; a bad file is skipped and noted.
    `environment`: environment.json's values for these objects, by displayName."""
    found = {}
    for rel in object_files(files, folder):
        try:
            data = _inline_file_references(files, _parse_document(files, rel) or {})
            if environment and isinstance(data, dict):
                data = _apply_environment(data, environment, rel, folder)
            item = _to_message(cls, data, rel)
        except ExportError as exc:
            skipped.append(str(exc))
            continue
        item.display_name = item.display_name or PurePosixPath(rel).stem
        found[item.display_name] = item
    return found


def _check_references(loaded: LoadedApp) -> None:
    """Drop dangling displayName references, reporting each, so the rest still runs."""
    for agent in loaded.agents.values():
        for attr, pool, what in (("tools", loaded.tools, "tool"), ("child_agents", loaded.agents, "agent")):
            kept = []
            for ref in getattr(agent, attr):
                if ref in pool or (what == "tool" and ref in RESERVED_TOOLS):
                    kept.append(ref)
                else:
                    note = f"agent {agent.display_name!r}: {what} {ref!r} is not defined in the export; skipped"
                    loaded.skipped.append(note)
                    agent.validation_errors.append(note)
            setattr(agent, attr, kept)
        kept_toolsets = []
        for ref in agent.toolsets:
            if ref.toolset.rsplit("/", 1)[-1] in loaded.toolsets:
                ref.toolset = ref.toolset.rsplit("/", 1)[-1]
                kept_toolsets.append(ref)
            else:
                note = f"agent {agent.display_name!r}: toolset {ref.toolset!r} is not defined in the export; skipped"
                loaded.skipped.append(note)
                agent.validation_errors.append(note)
        if len(kept_toolsets) != len(agent.toolsets):
            agent.toolsets = kept_toolsets
    for tool in loaded.tools.values():
        kind = loaded.tool_kind(tool)
        if kind not in RUNNABLE_TOOL_KINDS and not tool.tool_fake_config.code_block.python_code:  # fakes: load report
            loaded.skipped.append(
                f"tool {tool.display_name!r}: {_camel(kind) or 'unknown tool type'} is not supported offline; "
                "calls to it answer with an error response"
            )
    for example in loaded.examples:
        if example.entry_agent and example.entry_agent not in loaded.agents:
            loaded.skipped.append(
                f"example {example.display_name!r}: entryAgent {example.entry_agent!r} is not defined; "
                "the example is used for the root agent"
            )
            example.entry_agent = ""


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _load_documents(files: _ExportFiles, loaded: LoadedApp) -> None:
    for name, tool in loaded.tools.items():
        if loaded.tool_kind(tool) not in ("data_store_tool", "google_search_tool"):
            continue
        folder = f"tools/{name}/documents/"
        index_rel = files.first(folder + "index.yaml", folder + "index.yml", folder + "index.json")
        meta: dict[str, dict] = {}
        if index_rel:
            entries = _parse_document(files, index_rel) or []
            meta = {e["file"]: e for e in entries if isinstance(e, dict) and "file" in e}
        docs = []
        for rel in files.names():
            if not rel.startswith(folder) or rel == index_rel:
                continue
            fname = rel[len(folder):]
            if not fname.endswith((".md", ".txt")):
                continue
            text = files.read_text(rel)
            info = meta.get(fname, {})
            heading = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
            docs.append(
                Document(
                    title=info.get("title") or heading or PurePosixPath(fname).stem,
                    uri=info.get("uri") or f"docs/{fname}",
                    text=text,
                )
            )
        if not docs:
            loaded.skipped.append(
                f"tool {name!r}: no offline documents under {folder}; searches return no results"
            )
        loaded.documents[name] = docs


def _load_environment(files: _ExportFiles, skipped: list[str]) -> dict:
    """environment.json: per-environment values (`{"toolsets": {name: {...}}, "tools": {...}}`)
    that replace `$env_var` in the export's toolsets and tools."""
    rel = files.first("environment.json")
    if rel is None:
        return {}
    try:
        data = json.loads(files.read_text(rel) or "{}")
    except json.JSONDecodeError as exc:
        skipped.append(f"{rel}: not valid JSON ({exc}); its values are not used, so `$env_var` stays as it is")
        return {}
    if not isinstance(data, dict):
        skipped.append(f"{rel}: expected an object of environment values; ignored")
        return {}
    return data


def _apply_environment(data: dict, environment: dict, rel: str, folder: str) -> dict:
    from .toolsets import substitute_env

    name = data.get("displayName") or PurePosixPath(rel).stem
    overrides = environment.get(name)
    if overrides is None:
        return data
    notes: list[str] = []
    return substitute_env(data, overrides, f"{folder}/{name}", notes)  # the load report lists the notes


def _load_toolsets_and_guardrails(files: _ExportFiles, loaded: LoadedApp) -> None:
    """toolsets/ (with environment.json's values) and their tools; guardrails/."""
    from .toolsets import operations

    loaded.toolsets = _load_objects(files, "toolsets", ces_v1.Toolset, loaded.skipped, loaded.environment.get("toolsets"))
    for name, toolset in loaded.toolsets.items():
        ops, notes = operations(toolset)
        loaded.toolset_notes[name] = notes
        for op in ops:
            if op.display_name in loaded.tools:
                notes.append(f"tool {op.tool_id!r} is named {op.display_name!r} in conversations, "
                             "as a tool under tools/ is; the tools/ one is used")
                continue
            loaded.toolset_operations[op.display_name] = op
    if not loaded.guardrails:  # another loader may have read them already
        loaded.guardrails = _load_objects(files, "guardrails", ces_v1.Guardrail, loaded.skipped)


def toolset_tool_names(loaded: LoadedApp, agent: ces_v1.Agent) -> list[str]:
    """The toolset tools an agent has (its `toolsets[].toolIds`, or all of a toolset's tools
    when it names none), by the name conversations call them."""
    names = []
    for ref in agent.toolsets:
        wanted = set(ref.tool_ids)
        for display, op in loaded.toolset_operations.items():
            if op.toolset == ref.toolset and (not wanted or op.tool_id in wanted):
                names.append(display)
    return names


def check(path: str) -> tuple[LoadedApp | None, LoadReport, int]:
    """`ces-nb emulator --check`: the app (None when it cannot load), its report, and the exit
    status (2 when the app cannot load, as `ces-nb emulator` exits for it)."""
    logger = logging.getLogger("ces_nb.emulator")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the report is printed; its start-up log lines would repeat it
    try:
        loaded = load_export(path)
    except ExportError as exc:
        return None, LoadReport(app="", source=str(path), fatal=str(exc)), 2
    finally:
        logger.setLevel(level)
    return loaded, loaded.report, 0
