"""Load a CES app export (folder or zip) into the official ces_v1 types.

The layout is the one in the CES docs' "Export format reference":

    app.yaml|json
    global_instruction.txt            (optional, referenced by app.globalInstruction)
    agents/<name>/<name>.json|yaml    (instruction: agents/<name>/instruction.txt)
    tools/<name>/<name>.json|yaml     (pythonFunction.pythonCode: tools/<name>/python_function/python_code.py)
    examples/<name>/<name>.json|yaml

Cross-references use displayName. JSON and YAML are equally valid.

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
from pathlib import PurePosixPath
from typing import Any

import yaml
from google.cloud import ces_v1
from google.protobuf import json_format

log = logging.getLogger("ces_nb.emulator")

RESERVED_TOOLS = ("end_session", "transfer_to_agent", "customize_response")
# Keys whose string value is a path to a file in the export, inlined on load.
FILE_REFERENCE_KEYS = {"instruction", "globalInstruction", "pythonCode"}
# Tool kinds the emulator can run offline; any other kind is stood in for.
RUNNABLE_TOOL_KINDS = {
    "client_function",
    "python_function",
    "data_store_tool",
    "google_search_tool",
    "system_tool",
}


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


def _object_files(files: _ExportFiles, folder: str) -> list[str]:
    """`folder/<name>/<name>.json|yaml` entries, in name order."""
    found = []
    for rel in files.names():
        parts = PurePosixPath(rel).parts
        if len(parts) == 3 and parts[0] == folder:
            stem = PurePosixPath(parts[2]).stem
            if stem == parts[1] and parts[2].rsplit(".", 1)[-1] in ("json", "yaml", "yml"):
                found.append(rel)
    return found


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug or "app"


def load_export(path: str, app_id: str | None = None) -> LoadedApp:
    """Load an export. Raises ExportError only for a missing/invalid app file or root agent."""
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
    agents = _load_objects(files, "agents", ces_v1.Agent, skipped)
    if app.root_agent not in agents:
        known = ", ".join(sorted(agents)) or "none"
        problems = "".join(f"; {note}" for note in skipped if note.startswith("agents/"))
        raise ExportError(
            f"{app_rel}: rootAgent {app.root_agent!r} names no agent under agents/ "
            f"(agents loaded: {known}){problems}"
        )
    tools = _load_objects(files, "tools", ces_v1.Tool, skipped)
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
    _check_references(loaded)
    _load_documents(files, loaded)
    for note in loaded.skipped:
        log.warning("app %s: %s", loaded.app_id, note)
    loaded.app.validation_errors.extend(loaded.skipped)
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


def _load_objects(files: _ExportFiles, folder: str, cls, skipped: list[str]) -> dict:
    """`folder/<name>/<name>.*` as `cls` messages by displayName; a bad file is skipped and noted."""
    found = {}
    for rel in _object_files(files, folder):
        try:
            data = _inline_file_references(files, _parse_document(files, rel) or {})
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
        if agent.toolsets:
            note = f"agent {agent.display_name!r}: toolsets are not supported offline; skipped"
            loaded.skipped.append(note)
            agent.validation_errors.append(note)
    for tool in loaded.tools.values():
        kind = loaded.tool_kind(tool)
        if kind not in RUNNABLE_TOOL_KINDS:
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
