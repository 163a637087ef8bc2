"""OpenTelemetry spans, as ADK emits them -> the CES span tree: the one mapping. The emulator
builds each turn's root_span with it (as protos), the explorer maps captured ADK spans with it
(as Span records), so both read the same.

It imports nothing from ces_nb: the emulator may use it without the notebook side.
Each node is made by a `build(name, start_ns, end_ns, attributes, children)` the caller
passes; attributes whose value is None are left out.

    root       perceived latency (ms)
      LLM      agent, model, input token count, output token count, time to first chunk (ms)
      Tool     name, agent, args, response (objects, not JSON text), tool call id
      Callback agent, stage (the CES callback, e.g. before_model_callback), name, file,
               returned (None, LlmResponse, Content, dict), error and traceback if it raised
      Guardrail agent, name, type (contentFilter, codeCallback, llmPolicy...), stage,
               decision (OK, TRIGGER; NOT_EVALUATED offline for LLM-judged ones),
               reason, action, evaluated

Spans of other layers (invocation, agent, workflow) are not kept: their LLM, Tool, Callback
and Guardrail spans move up to the nearest kept span.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# What CES calls its spans (the voice ones come from the emulator's speech pipeline).
SPAN_KINDS = ("LLM", "Tool", "Callback", "Guardrail", "VAD", "ASR", "TTS")
# Set by the emulator's callbacks and guardrails on their spans, beyond agent and stage.
CALLBACK_ATTRIBUTES = ("name", "file", "returned", "error", "traceback")
GUARDRAIL_ATTRIBUTES = ("name", "type", "stage", "decision", "reason", "action", "evaluated")
# ADK's span names, for spans that carry no gen_ai.operation.name (ADK's default semconv).
_ADK_OPERATIONS = ("generate_content", "call_llm", "execute_tool", "invoke_agent")


# build(name, start_ns, end_ns, attributes, children) -> a node with a `name`
Build = Callable[[str, int, int, dict, list], Any]


@dataclass
class ToolRecord:
    """What a turn's events say about one tool call (ADK does not put args on spans by default)."""

    name: str  # CES display name
    adk_name: str
    args: dict
    response: Any = None


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def _plain(value: Any) -> Any:
    """A tool's args or response as a value a Struct holds (what isn't JSON becomes its str)."""
    return json.loads(json.dumps(value, default=str))


def operation(span: Any, by_name: bool) -> str:
    """The GenAI operation a span stands for: its gen_ai.operation.name (the stable semconv, which
    the emulator runs), else, with `by_name`, the ADK span name it starts with (ADK's default)."""
    attrs = span.attributes or {}
    op = attrs.get("gen_ai.operation.name")
    if op or not by_name:
        return op or ""
    if "(" in span.name:  # "execute_tool (merged)" only wraps the real execute_tool spans
        return ""
    word = span.name.split(" ", 1)[0]
    return word if word in _ADK_OPERATIONS else ""


class _Mapping:
    """One trace's spans, mapped from a top span down."""

    def __init__(self, spans: Iterable[Any], build: Build, agent_names: dict[str, str] | None,
                 tools_by_id: dict[str, ToolRecord] | None, by_name: bool):
        self.build, self.by_name = build, by_name
        self.agent_names = agent_names or {}
        self.unclaimed = dict(tools_by_id or {})
        self.children: dict[int, list[Any]] = {}
        for span in spans:
            if span.parent is not None:
                self.children.setdefault(span.parent.span_id, []).append(span)
        for kids in self.children.values():
            kids.sort(key=lambda s: s.start_time or 0)

    def node(self, name: str, span: Any, attributes: dict, children: list) -> Any:
        start = span.start_time or 0
        end = span.end_time or span.start_time or 0
        return self.build(name, start, end, {k: v for k, v in attributes.items() if v is not None}, children)

    def below(self, span: Any, agent: str) -> list:
        return [c for kid in self.children.get(span.context.span_id, []) for c in self.convert(kid, agent)]

    def agent_of(self, span: Any, op: str, agent: str) -> str:
        """The agent speaking under `span`: an agent span names it, anything else keeps `agent`."""
        if op != "invoke_agent":
            return agent
        name = str((span.attributes or {}).get("gen_ai.agent.name", ""))
        return self.agent_names.get(name, name if not self.agent_names else agent)

    def convert(self, span: Any, agent: str) -> list:
        attrs = span.attributes or {}
        op = operation(span, self.by_name)
        agent = self.agent_of(span, op, agent)
        nested = self.below(span, agent)
        # ADK's call_llm span is the LLM span only when no generate_content span (the stable
        # GenAI semconv) sits inside it.
        if op == "generate_content" or (op == "call_llm" and not any(n.name == "LLM" for n in nested)):
            return [self.node("LLM", span, self.llm_attributes(span, attrs, agent), nested)]
        if op == "execute_tool":
            return [self.node("Tool", span, self.tool_attributes(span, attrs, agent), nested)]
        if span.name.startswith("ces.callback"):
            return [self.node("Callback", span, {"agent": attrs.get("agent") or agent, "stage": attrs.get("stage"),
                                                 **{k: attrs.get(k) for k in CALLBACK_ATTRIBUTES}}, nested)]
        if span.name == "ces.guardrail":
            return [self.node("Guardrail", span, {"agent": attrs.get("agent") or agent,
                                                  **{k: attrs.get(k) for k in GUARDRAIL_ATTRIBUTES}}, nested)]
        return nested

    @staticmethod
    def llm_attributes(span: Any, attrs: Any, agent: str) -> dict:
        first = next((e.timestamp for e in span.events if e.name == "first_chunk"), span.end_time)
        return {
            "agent": agent,
            "model": attrs.get("gen_ai.request.model"),
            "input token count": attrs.get("gen_ai.usage.input_tokens"),
            "output token count": attrs.get("gen_ai.usage.output_tokens"),
            "time to first chunk (ms)": _ms(first - span.start_time),
        }

    def tool_attributes(self, span: Any, attrs: Any, agent: str) -> dict:
        record, call_id = self.claim_tool(attrs)
        return {
            "name": record.name if record else attrs.get("gen_ai.tool.name"),
            "agent": agent,
            # Structured values, as CES reports them and clients read them (cxas-scrapi's
            # turn evals and trace report index attributes["args"] as an object).
            "args": _plain(record.args) if record else None,
            "response": _plain(record.response) if record and record.response is not None else None,
            "tool call id": call_id,
        }

    def claim_tool(self, attrs: Any) -> tuple[ToolRecord | None, str | None]:
        call_id = attrs.get("gen_ai.tool.call.id")
        if call_id in self.unclaimed:
            return self.unclaimed.pop(call_id), call_id
        # Long-running calls have no response event yet, so ADK records no id: match by tool name.
        name = attrs.get("gen_ai.tool.name")
        for cid, record in list(self.unclaimed.items()):
            if record.adk_name == name:
                return self.unclaimed.pop(cid), cid
        return None, None


def root_span(turn_span: Any, spans: Iterable[Any], build: Build, *, agent_names: dict[str, str] | None = None,
              tools_by_id: dict[str, ToolRecord] | None = None, perceived_latency_ns: int | None = None,
              by_name: bool = False) -> Any:
    """The CES root span for one turn: `turn_span` and the spans under it, mapped. `agent_names`
    maps ADK agent names to CES display names; `tools_by_id` says what each tool call was;
    `by_name`: also read operations from ADK's span names (see `operation`)."""
    mapping = _Mapping(spans, build, agent_names, tools_by_id, by_name)
    attributes = {}
    if perceived_latency_ns is not None:
        attributes["perceived latency (ms)"] = _ms(perceived_latency_ns)
    agent = mapping.agent_of(turn_span, operation(turn_span, by_name), "")
    return mapping.node("root", turn_span, attributes, mapping.below(turn_span, agent))


def root_spans(spans: Iterable[Any], build: Build) -> list:
    """Each trace among captured spans (e.g. an InMemorySpanExporter's) as a root span, its
    top span the turn, in start order. Spans from outside the emulator may use ADK's default
    semconv, so operations are read from span names too."""
    spans = list(spans)
    ids = {s.context.span_id for s in spans}
    tops = [s for s in spans if s.parent is None or s.parent.span_id not in ids]
    return [root_span(top, spans, build, by_name=True) for top in sorted(tops, key=lambda s: s.start_time or 0)]

