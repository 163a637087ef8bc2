"""CES guardrails offline: the app's (`app.guardrails`) and each agent's (`agent.guardrails`).

| Guardrail            | offline                                                            |
|----------------------|--------------------------------------------------------------------|
| contentFilter        | runs: user input before the model sees it, agent text after it     |
|                      | answers; SIMPLE_STRING_MATCH (substring), WORD_BOUNDARY_STRING_MATCH, |
|                      | REGEXP_MATCH (RE2, as mocks.py), disregardDiacritics; case-insensitive |
|                      | but for regexes                                                    |
| codeCallback         | runs: its before/after agent and model callbacks, at those points; |
|                      | the code returns {"decision": "OK" | "TRIGGER", "reason": ...}     |
| llmPolicy, llmPromptSecurity, modelSafety | judged by an LLM: not evaluated offline (a span |
|                      | with evaluated=false, a log line, GetApp's validation_errors)      |

A TRIGGER takes the guardrail's action: respondImmediately answers its first enabled
response (CES picks one at random) and ends the turn, the model preempted or its answer
replaced; transferAgent hands over to the agent (at the model stages; at the agent stages
the turn just ends); generativeAnswer needs a model, so offline the turn ends with a fixed
sentence. Only `enabled` guardrails run. Each check is a `ces.guardrail` span (`Guardrail`
in the root span: name, type, stage, decision, reason, action).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from google.adk.models.llm_response import LlmResponse
from google.cloud import ces_v1
from google.genai import types

from .callbacks import CodeRunner, code_filename
from .playback import TRANSFER_TOOL, adk_name
from .tracing import tracer

if TYPE_CHECKING:
    from .callbacks import CallbackHost, Names

log = logging.getLogger("ces_nb.emulator")

GUARDRAIL_SPAN = "ces.guardrail"
FALLBACK_TEXT = "Sorry, I can't help with that."
LLM_JUDGED = ("llm_policy", "llm_prompt_security", "model_safety")
CODE_STAGES = ("before_agent_callback", "after_agent_callback", "before_model_callback", "after_model_callback")
Match = ces_v1.Guardrail.ContentFilter.MatchType
_LOGGED: set[tuple[str, str]] = set()


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


class Blocked:
    """A TRIGGER's effect: the canned answer, or a transfer."""

    def __init__(self, guardrail: ces_v1.Guardrail, stage: str):
        self.guardrail = guardrail
        action = guardrail.action
        kind = ces_v1.TriggerAction.pb(action).WhichOneof("action")
        self.transfer = action.transfer_agent.agent.rsplit("/", 1)[-1] if kind == "transfer_agent" else ""
        self.text = ""
        if kind == "respond_immediately":
            self.text = next((r.text for r in action.respond_immediately.responses if not r.disabled and r.text), "")
        elif kind != "transfer_agent":
            self.text = FALLBACK_TEXT  # generativeAnswer (needs a model) or no action
        self.action = _camel(kind or "") or "none"
        self.stage = stage

    def content(self) -> types.Content:
        return types.Content(role="model", parts=[types.Part(text=self.text or FALLBACK_TEXT)])

    def llm_response(self, names: "Names") -> LlmResponse:
        parts = [types.Part(text=self.text)] if self.text else []
        if self.transfer:
            target = names.agent_names.get(self.transfer, adk_name(self.transfer))
            parts.append(types.Part(function_call=types.FunctionCall(name=TRANSFER_TOOL, args={"agent_name": target})))
        return LlmResponse(content=types.Content(role="model", parts=parts or [types.Part(text=FALLBACK_TEXT)]))


class _Guard:
    def __init__(self, guardrail: ces_v1.Guardrail, host: "CallbackHost"):
        self.g = guardrail
        self.name = guardrail.display_name
        self.kind = ces_v1.Guardrail.pb(guardrail).WhichOneof("guardrail_type") or ""
        self.type = _camel(self.kind) or "unknown"
        self.code: dict[str, CodeRunner] = {}
        if self.kind == "code_callback":
            folder = adk_name(self.name)
            for stage in CODE_STAGES:
                cb = getattr(guardrail.code_callback, stage)
                if cb.python_code.strip() and not cb.disabled:
                    fallback = f"guardrails/{folder}/code_callback/{stage}/python_code.py"
                    self.code[stage] = CodeRunner(host, "", stage, cb, code_filename(host.app, cb.python_code, fallback),
                                                  f"guardrail {self.name}")
        self.input_phrases: list[str] = []
        self.output_phrases: list[str] = []
        self.regexes: dict[str, Any] = {}
        if self.kind == "content_filter":
            f = guardrail.content_filter
            self.input_phrases = [*f.banned_contents, *f.banned_contents_in_user_input]
            self.output_phrases = [*f.banned_contents, *f.banned_contents_in_agent_response]
            self.match = f.match_type
            self.diacritics = f.disregard_diacritics
            if self.match == Match.REGEXP_MATCH:
                from .mocks import _compile

                for p in {*self.input_phrases, *self.output_phrases}:
                    compiled = _compile(p)
                    if compiled is None:
                        log.warning("guardrail %r: RE2 cannot parse %r; it never matches", self.name, p)
                    self.regexes[p] = compiled

    def find(self, text: str, phrases: list[str]) -> str | None:
        """The first banned phrase the text contains, as the match type says."""
        if self.match == Match.REGEXP_MATCH:
            subject = _plain(text) if self.diacritics else text
            return next((p for p in phrases if (rx := self.regexes.get(p)) is not None and rx.search(subject)), None)
        subject = _fold(text, self.diacritics)
        for phrase in phrases:
            needle = _fold(phrase, self.diacritics)
            if not needle:
                continue
            if self.match == Match.WORD_BOUNDARY_STRING_MATCH:
                if re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", subject):
                    return phrase
            elif needle in subject:
                return phrase
        return None

    def span(self, stage: str, **attributes):
        attrs = {"name": self.name, "type": self.type, "stage": stage, **attributes}
        return tracer().start_as_current_span(GUARDRAIL_SPAN, attributes={k: v for k, v in attrs.items() if v is not None})


def _plain(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _fold(text: str, diacritics: bool) -> str:
    return (_plain(text) if diacritics else text).casefold()


def _text(content: types.Content | None) -> str:
    if content is None:
        return ""
    return " ".join(p.text for p in content.parts or [] if p.text and not p.thought)


class AppGuardrails:
    """Every enabled guardrail of the app, and which agent each applies to."""

    def __init__(self, app, host: "CallbackHost"):
        self.app = app
        self.host = host
        self.guards: dict[str, _Guard] = {}
        known = app_guardrails(app)
        for name, guardrail in known.items():
            if guardrail.enabled:
                self.guards[name] = _Guard(guardrail, host)
        self.app_level = self._resolve(app.app.guardrails, "the app")
        self._checked: OrderedDict[str, set] = OrderedDict()  # invocation id -> guardrails run on its input
        for guard in self.guards.values():
            if guard.kind in LLM_JUDGED:
                note = (f"guardrail {guard.name!r}: {guard.type} is judged by an LLM and is not evaluated offline "
                        f"(its spans say evaluated=false)")
                if (app.app_id, guard.name) not in _LOGGED:  # once, though warm-up builds the app again
                    _LOGGED.add((app.app_id, guard.name))
                    log.warning("app %s: %s", app.app_id, note)
                if not any(guard.name in e and "not evaluated" in e for e in app.app.validation_errors):
                    app.app.validation_errors.append(note)

    def _resolve(self, refs, owner: str) -> list[_Guard]:
        out = []
        for ref in refs:
            short = ref.rsplit("/", 1)[-1]
            guard = self.guards.get(short) or next((g for n, g in self.guards.items() if adk_name(n) == adk_name(short)), None)
            if guard is not None:
                out.append(guard)
            elif short not in app_guardrails(self.app):
                log.warning("app %s: %s names guardrail %r, which the export does not define", self.app.app_id, owner, short)
        return out

    def for_agent(self, agent: ces_v1.Agent) -> "AgentGuardrails | None":
        guards = list(self.app_level)
        guards += [g for g in self._resolve(agent.guardrails, f"agent {agent.display_name!r}") if g not in guards]
        return AgentGuardrails(self, agent.display_name, guards) if guards else None

    def first_check(self, invocation_id: str, name: str) -> bool:
        """True once per invocation and guardrail: user input is checked once a turn."""
        seen = self._checked.get(invocation_id)
        if seen is None:
            seen = self._checked[invocation_id] = set()
            while len(self._checked) > 256:
                self._checked.popitem(last=False)
        if name in seen:
            return False
        seen.add(name)
        return True


class AgentGuardrails:
    def __init__(self, shared: AppGuardrails, agent: str, guards: list[_Guard]):
        self.shared = shared
        self.agent = agent
        self.guards = guards

    def at(self, stage: str) -> bool:
        for g in self.guards:
            if stage in g.code:
                return True
            if stage in ("before_model_callback", "after_model_callback") and (g.kind == "content_filter" or g.kind in LLM_JUDGED):
                return True
        return False

    def checks_output(self) -> bool:
        """Whether agent responses are checked (their streamed text then waits for the check)."""
        return any(g.output_phrases or "after_model_callback" in g.code for g in self.guards)

    async def check_input(self, ctx) -> Blocked | None:
        """Content filters on the user's input, and the LLM-judged ones noted, once a turn."""
        text = _text(ctx.user_content)
        for g in self.guards:
            if not self.shared.first_check(ctx.invocation_id, g.name):
                continue
            if g.kind in LLM_JUDGED:
                with g.span("user input", agent=self.agent, evaluated=False, decision="NOT_EVALUATED",
                            reason="LLM-judged guardrails are not evaluated offline"):
                    pass
            elif g.kind == "content_filter" and g.input_phrases and text:
                blocked = self._filter(g, "user input", text, g.input_phrases)
                if blocked is not None:
                    return blocked
        return None

    async def check_output(self, ctx, llm_response: LlmResponse) -> Blocked | None:
        text = _text(llm_response.content)
        if not text:
            return None
        for g in self.guards:
            if g.kind == "content_filter" and g.output_phrases:
                blocked = self._filter(g, "agent response", text, g.output_phrases)
                if blocked is not None:
                    return blocked
        return None

    def _filter(self, g: _Guard, stage: str, text: str, phrases: list[str]) -> Blocked | None:
        hit = g.find(text, phrases)
        blocked = Blocked(g.g, stage) if hit is not None else None
        with g.span(stage, agent=self.agent, evaluated=True, decision="TRIGGER" if hit is not None else "OK",
                    reason=f"matched {hit!r}" if hit is not None else None,
                    action=blocked.action if blocked else None):
            pass
        return blocked

    async def check_code(self, stage: str, ctx, args: dict) -> Blocked | None:
        for g in self.guards:
            runner = g.code.get(stage)
            if runner is None:
                continue
            runner.agent = self.agent
            with g.span(stage, agent=self.agent, evaluated=True) as span:
                value, reply = await runner.run(ctx, dict(args))
                decision, reason = _decision(value)
                if "error" in reply:
                    reason = f"the guardrail's code failed ({reply['error']}); it does not trigger"
                blocked = Blocked(g.g, stage) if decision == "TRIGGER" else None
                span.set_attribute("decision", decision)
                if reason:
                    span.set_attribute("reason", reason)
                if blocked is not None:
                    span.set_attribute("action", blocked.action)
            if blocked is not None:
                return blocked
        return None


def app_guardrails(app) -> dict[str, ces_v1.Guardrail]:
    """The export's guardrails/ by displayName: as the loader read them, or read here."""
    found = getattr(app, "guardrails", None)
    if found is None:
        found = app.__dict__.get("_ces_guardrails")
    if found is None:
        from .export import _ExportFiles, _load_objects

        skipped: list[str] = []
        try:
            found = _load_objects(_ExportFiles(app.source), "guardrails", ces_v1.Guardrail, skipped)
        except (OSError, ValueError) as exc:
            skipped.append(f"guardrails/: {exc}")
            found = {}
        for note in skipped:
            log.warning("app %s: %s", app.app_id, note)
        app.__dict__["_ces_guardrails"] = found
    return found


def _decision(value: Any) -> tuple[str, str]:
    if isinstance(value, dict):
        decision = str(value.get("decision", "OK")).upper()
        return ("TRIGGER" if decision == "TRIGGER" else "OK"), str(value.get("reason") or "")
    if isinstance(value, str):
        return ("TRIGGER" if value.upper() == "TRIGGER" else "OK"), ""
    return "OK", ""
