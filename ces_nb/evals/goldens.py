"""A conversation (a Session's or a Transcript's turns) -> a golden: cxas-scrapi YAML or a native
CES Evaluation (JSON). Client tool calls keep the answers the client gave (a tool-call form, a
handler, `respond`) as the golden's `output` / `mockToolResponse`, so the golden replays them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .observe import SYSTEM_TOOLS, observe


def _sorted(value: Any) -> Any:
    """Keys in order, so a golden from a live session and from its saved transcript are the same text."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _inputs(turn) -> list[dict]:
    return [i.to_dict() for i in turn.inputs]


def _is_continuation(turn) -> bool:
    items = _inputs(turn)
    return bool(items) and all(("tool_responses" in d or "toolResponses" in d) for d in items)


def _variables(items: list[dict]) -> dict:
    out: dict = {}
    for d in items:
        if isinstance(d.get("variables"), dict):
            out.update(d["variables"])
    return out


def _user(items: list[dict]) -> dict:
    for d in items:
        if d.get("text"):
            return {"text": d["text"]}
        if d.get("event"):
            event = d["event"]
            return {"event": event.get("event", "") if isinstance(event, dict) else str(event)}
        if d.get("dtmf"):
            return {"dtmf": d["dtmf"]}
    return {}


def conversation_turns(turns) -> list[dict]:
    """Turns grouped as a golden's user turns: what the user sent, and the agent's turns answering
    it (tool-response continuations included), observed."""
    groups: list[dict] = []
    for turn in turns:
        if _is_continuation(turn) and groups:
            groups[-1]["turns"].append(turn)
            continue
        items = _inputs(turn)
        groups.append({"user": _user(items), "variables": _variables(items), "turns": [turn]})
    for g in groups:
        g["client_ids"] = {c.id for t in g["turns"] for c in t.tool_calls}
        g["seen"] = seen = observe(g["turns"])
        for call in seen.calls:
            call.args, call.response = _sorted(call.args), _sorted(call.response)
        seen.end_args = _sorted(seen.end_args)
        g["variables"] = _sorted(g["variables"])
        # each agent message its own line, as scrapi writes a golden (a turn's text joins them with blank lines)
        g["texts"] = [p.strip() for t in g["turns"] if t.text for p in t.text.split("\n\n") if p.strip()]
        g["unanswered"] = [c.name for c in seen.calls if c.id in g["client_ids"] and c.response is None]
    return groups


def scrapi_golden(turns, name: str, tags: list[str] | None = None) -> dict:
    groups = conversation_turns(turns)
    conversation: dict[str, Any] = {"conversation": name}
    if tags:
        conversation["tags"] = list(tags)
    params = groups[0]["variables"] if groups else {}
    if params:
        conversation["session_parameters"] = params
    out_turns = []
    for g in groups:
        if not g["user"] and not g["texts"] and not g["seen"].calls:
            continue  # a variables-only turn: its variables are the session parameters
        user = g["user"]
        turn: dict[str, Any] = {"user": user.get("text") or (f"<event>{user['event']}</event>" if "event" in user else user.get("dtmf", ""))}
        calls = []
        for target in g["seen"].transfers:
            calls.append({"action": "transfer_to_agent", "args": {"agent": target}})
        for call in g["seen"].calls:
            item: dict[str, Any] = {"action": call.name, "args": call.args}
            if call.id in g["client_ids"] and call.response is not None:
                item["output"] = call.response
            calls.append(item)
        if g["seen"].ended:
            calls.append({"action": "end_session", "args": g["seen"].end_args})
        if calls:
            turn["tool_calls"] = calls
        if g["texts"]:
            turn["agent"] = g["texts"][0] if len(g["texts"]) == 1 else g["texts"]
        out_turns.append(turn)
    conversation["turns"] = out_turns
    return {"conversations": [conversation]}


def native_golden(turns, name: str, tags: list[str] | None = None) -> dict:
    steps_by_turn = []
    for g in conversation_turns(turns):
        steps: list[dict] = []
        if g["variables"]:
            steps.append({"userInput": {"variables": g["variables"]}})
        user = g["user"]
        if "text" in user:
            steps.append({"userInput": {"text": user["text"]}})
        elif "event" in user:
            steps.append({"userInput": {"event": {"event": user["event"]}}})
        elif "dtmf" in user:
            steps.append({"userInput": {"dtmf": user["dtmf"]}})
        for target in g["seen"].transfers:
            steps.append({"expectation": {"agentTransfer": {"displayName": target}}})
        for call in g["seen"].calls:
            steps.append({"expectation": {"toolCall": {"displayName": call.name, "args": call.args}}})
            if call.response is not None:
                key = "mockToolResponse" if call.id in g["client_ids"] else "toolResponse"
                steps.append({"expectation": {key: {"displayName": call.name, "response": call.response}}})
        if g["texts"]:
            steps.append({"expectation": {"agentResponse": {"role": "agent", "chunks": [{"text": t} for t in g["texts"]]}}})
        if steps:
            steps_by_turn.append({"steps": steps})
    evaluation: dict[str, Any] = {"displayName": name, "golden": {"turns": steps_by_turn}}
    if tags:
        evaluation["tags"] = list(tags)
    return evaluation


def _name_from(transcript) -> str:
    tail = (transcript.session or "conversation").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_]+", "_", tail).strip("_") or "conversation"


def to_golden(transcript, path: str | Path | None = None, *, name: str | None = None, tags: list[str] | None = None,
              format: str | None = None) -> str:
    """The transcript as a golden: `format` "yaml" (cxas-scrapi, the default) or "json" (a native
    CES Evaluation); from `path`'s suffix when given. Writes `path` when given; returns the text."""
    import yaml

    name = name or _name_from(transcript)
    fmt = format or ("json" if path is not None and str(path).lower().endswith(".json") else "yaml")
    if fmt not in ("yaml", "json"):
        raise ValueError(f"format is 'yaml' (cxas-scrapi goldens) or 'json' (a CES Evaluation), not {format!r}")
    turns = list(transcript.turns)
    if not turns:
        raise ValueError("to_golden: the conversation has no turns, so there is nothing to expect; send a message first")
    unanswered = [name for g in conversation_turns(turns) for name in g["unanswered"]]
    if unanswered:
        import warnings

        names = ", ".join(dict.fromkeys(unanswered))
        warnings.warn(f"to_golden: the client tool call(s) {names} were never answered, so the golden has no output for "
                      "them and what the agent says after the answer is not in it; replayed, the call is answered {} and "
                      "the golden will likely fail. Answer it first (session.respond(...) or the tool-call form), or add "
                      "`output:` to the call in the golden.", UserWarning, stacklevel=2)
    if fmt == "json":
        text = json.dumps(native_golden(turns, name, tags), indent=2, ensure_ascii=False) + "\n"
    else:
        text = "# A golden in the cxas-scrapi format, written by ces_nb's to_golden().\n" + yaml.safe_dump(
            scrapi_golden(turns, name, tags), sort_keys=False, allow_unicode=True, width=100)
    if path is not None:
        Path(path).expanduser().write_text(text, encoding="utf-8")
    return text


__all__ = ["to_golden", "scrapi_golden", "native_golden", "SYSTEM_TOOLS"]
