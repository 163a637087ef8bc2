"""The offline model: an ADK BaseLlm that plays back the app's example conversations.

Each example is compiled once into a Script (scripts.py reads goldens, few-shot blocks in
instructions and recorded transcripts into Scripts the same way): its user turns, and for each turn
the agent's steps cut into groups, each group ending where the agent must wait
for something (a tool call or a transfer). On every model call the playback
reads the conversation from the LlmRequest alone (so it works under a plain
ADK Runner too), picks the example turn that best matches what the user said,
and emits group number k, where k is how many calls the agents already made
since the user spoke. Deterministic: same conversation, same reply.

`{name}` placeholders in the emitted text and args are filled from the latest
tool response here; the runtime fills what is left from the session variables
(an after-model callback), so the response wins.
"""

from __future__ import annotations

import ast
import difflib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, AsyncGenerator

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.cloud import ces_v1
from google.genai import types
from google.protobuf import json_format
from opentelemetry import trace

from .history_window import PRIOR_HISTORY, HistoryDigest

log = logging.getLogger("ces_nb.emulator")

PLAYBACK_MODEL = "ces-nb-playback"
TRANSFER_TOOL = "transfer_to_agent"
# Below this similarity to every example, the user is answered with a fallback.
MATCH_THRESHOLD = 0.3

_WORD = re.compile(r"[a-z0-9]+")
# A `{name}` or `{a.b}` placeholder in scripted text or args (scripts.py reads them too).
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")
_PREAMBLE = "For context:"
_SAID = re.compile(r"^\[(?P<agent>[^\]]+)\] said:\s*(?P<body>.*)$", re.S)
_CALLED = re.compile(r"^\[(?P<agent>[^\]]+)\] called tool `(?P<name>[^`]+)`(?: with parameters:\n(?P<body>.*))?", re.S)
_RETURNED = re.compile(r"^\[(?P<agent>[^\]]+)\] `(?P<name>[^`]+)` tool returned result:\s*(?P<body>.*)$", re.S)
_QUOTE_MARKERS = re.compile(r"<<<(BEGIN|END)_QUOTED_AGENT_CONTENT>>>")


@dataclass
class Step:
    kind: str  # user | text | call | response | transfer | payload
    text: str = ""
    name: str = ""
    data: Any = None
    agent: str = ""


@dataclass
class ScriptTurn:
    user: str
    tokens: frozenset[str]
    groups: list[list[Step]] = field(default_factory=list)


@dataclass
class Script:
    name: str
    turns: list[ScriptTurn]
    # Where it came from, for people: "examples/greeting", "evals/goldens/x.yaml#conversations[2]".
    source: str = ""


def adk_name(display_name: str) -> str:
    """ADK agent and tool names must be identifiers; CES display names need not be."""
    name = re.sub(r"\W+", "_", display_name).strip("_") or "agent"
    return name if not name[0].isdigit() else "_" + name


# Every model call of a turn reads the same utterances again (and the ones before them, once per
# scripted turn): a 64 KiB message took ~2 ms of the event loop each time. So they are remembered:
# many short ones, a few long ones (a turn's text inputs join into one, up to 8 MiB: not kept).
SHORT_TEXT_CHARS = 4096
LONG_TEXT_CHARS = 256 * 1024


def _remembered(compute):
    """`compute` over a text, remembered by the text's length: many short ones, a few long ones,
    none past LONG_TEXT_CHARS."""
    short, long = lru_cache(maxsize=1024)(compute), lru_cache(maxsize=8)(compute)

    def read(text: str):
        if len(text) <= SHORT_TEXT_CHARS:
            return short(text)
        return long(text) if len(text) <= LONG_TEXT_CHARS else compute(text)

    return read


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _word_count(text: str) -> int:
    return len(text.split())


tokens = _remembered(_words)  # frozenset[str]
word_count = _remembered(_word_count)  # as a token count reads them


def similarity(a: str, b: str, ta: frozenset[str] | None = None, tb: frozenset[str] | None = None) -> float:
    """Word overlap (Dice), softened by character similarity for typos."""
    ta = tokens(a) if ta is None else ta
    tb = tokens(b) if tb is None else tb
    if not ta or not tb:
        return 1.0 if a.strip().lower() == b.strip().lower() else 0.0
    dice = 2 * len(ta & tb) / (len(ta) + len(tb))
    # Cut before lowering: a 64 KiB message was lowered whole for each scripted turn it was scored against.
    return 0.75 * dice + 0.25 * _char_ratio(a[:CHAR_RATIO_CHARS].lower(), b[:CHAR_RATIO_CHARS].lower())


# difflib's matcher is quadratic in the worst case: a 1 MB message would hold the event loop (and
# every other session) for seconds. Utterances are short; past this many characters the
# character-level score only softens typos, so the tail is left out of it.
CHAR_RATIO_CHARS = 1000


@lru_cache(maxsize=8192)
def _char_ratio(a: str, b: str) -> float:
    # Every model call of a turn compares the same utterances again: remember them.
    return difflib.SequenceMatcher(None, a[:CHAR_RATIO_CHARS], b[:CHAR_RATIO_CHARS]).ratio()


def _struct(msg) -> dict:
    return json_format.MessageToDict(msg) if msg is not None else {}


class ScriptBuilder:
    """Cuts one conversation into a Script, whatever it was written in (an example, a golden,
    a few-shot block, a transcript): user turns, each with its agent steps in groups, a group
    ending where the agent must wait (a tool call's response, a transfer).

    Steps are said by the current agent (the entry agent, then each transfer's target) unless
    the caller names another one."""

    def __init__(self, name: str, agent: str, source: str = ""):
        self.name, self.source, self.agent = name, source, agent
        self.turns: list[ScriptTurn] = []
        self._group: list[Step] = []

    def user(self, utterance: str) -> None:
        self._close()
        self.turns.append(ScriptTurn(user=utterance, tokens=tokens(utterance)))

    def responded(self) -> None:
        """A tool response: what the agent does next is the next group."""
        self._close()

    def agent_turn(self) -> None:
        """The agent speaks: before any user turn, that is an empty one (the session start)."""
        if not self.turns:
            self.turns.append(ScriptTurn(user="", tokens=frozenset()))

    def say(self, text: str, agent: str | None = None) -> None:
        self._add(Step("text", text=text, agent=agent or self.agent))

    def payload(self, data: Any, agent: str | None = None) -> None:
        self._add(Step("payload", data=data, agent=agent or self.agent))

    def call(self, name: str, args: Any, agent: str | None = None) -> None:
        # Calls in a row, before any response, are one step: parallel function calls.
        self._add(Step("call", name=name, data=args, agent=agent or self.agent))

    def transfer(self, target: str, agent: str | None = None) -> None:
        self._add(Step("transfer", name=target, agent=agent or self.agent))
        self._close()
        self.agent = target

    def build(self) -> Script:
        self._close()
        return Script(name=self.name, turns=self.turns, source=self.source)

    def _add(self, step: Step) -> None:
        self.agent_turn()
        if self._group and self._group[-1].kind == "call" and step.kind in ("text", "payload"):
            self._close()  # words after a call belong to the step after its response
        self._group.append(step)

    def _close(self) -> None:
        if self._group and self.turns:
            self.turns[-1].groups.append(self._group)
        self._group = []


def compile_example(example: ces_v1.Example, root_agent: str, source: str = "") -> Script:
    """Example messages -> user turns, each with its agent step groups."""
    script = ScriptBuilder(example.display_name, example.entry_agent or root_agent, source)
    for message in example.messages:
        for chunk in message.chunks:
            pb = ces_v1.Chunk.pb(chunk)
            kind = pb.WhichOneof("data")
            if kind == "tool_response":
                script.responded()
                continue
            if message.role == "user":
                if kind in ("text", "transcript", "image", "blob"):
                    script.user(user_utterance_of_chunk(chunk, kind))
                continue
            script.agent_turn()
            if kind == "text":
                script.say(chunk.text)
            elif kind == "payload":
                script.payload(_struct(pb.payload))
            elif kind == "tool_call":
                call = chunk.tool_call
                script.call(call.tool or call.display_name, _struct(pb.tool_call.args))
            elif kind == "agent_transfer":
                script.transfer(chunk.agent_transfer.target_agent or chunk.agent_transfer.display_name)
    return script.build()


def user_utterance_of_chunk(chunk: ces_v1.Chunk, kind: str) -> str:
    if kind == "text":
        return chunk.text
    if kind == "transcript":
        return chunk.transcript
    media = chunk.image if kind == "image" else chunk.blob
    return f"[{kind} {media.mime_type}]"


def read_conversation(contents: list[types.Content]) -> list[Step]:
    """The conversation as the model sees it, including other agents' turns."""
    steps: list[Step] = []
    for content in contents:
        parts = content.parts or []
        if content.role == "user" and parts and (parts[0].text or "").startswith(_PREAMBLE):
            steps.extend(_read_presented(parts[1:]))
            continue
        user_text = []
        for part in parts:
            if part.function_call:
                steps.append(Step("call", name=part.function_call.name or "", data=dict(part.function_call.args or {})))
            elif part.function_response:
                steps.append(Step("response", name=part.function_response.name or "", data=part.function_response.response))
            elif part.text and not part.thought:
                if content.role == "user":
                    user_text.append(part.text)
                else:
                    steps.append(Step("text", text=part.text))
            elif part.inline_data and content.role == "user":
                user_text.append(f"[{'image' if (part.inline_data.mime_type or '').startswith('image/') else 'blob'} {part.inline_data.mime_type}]")
        if user_text:
            steps.append(Step("user", text=" ".join(user_text)))
    return steps


def _read_presented(parts: list[types.Part]) -> list[Step]:
    steps = []
    for part in parts:
        text = part.text or ""
        if m := _CALLED.match(text):
            args = _literal(_QUOTE_MARKERS.sub("", m["body"]).strip()) if m["body"] else None
            steps.append(Step("call", name=m["name"], data=args if isinstance(args, dict) else None, agent=m["agent"]))
        elif m := _RETURNED.match(text):
            steps.append(Step("response", name=m["name"], data=_literal(_QUOTE_MARKERS.sub("", m["body"]).strip()), agent=m["agent"]))
        elif m := _SAID.match(text):
            steps.append(Step("text", text=_QUOTE_MARKERS.sub("", m["body"]).strip(), agent=m["agent"]))
    return steps


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"result": text}


def fill_placeholders(value: Any, values: dict[str, Any]) -> Any:
    """Replace `{name}` (or `{a.b}`) where `values` has it; leave the rest for later. A string
    that is one placeholder alone takes the value itself, so `"amount": "{price}"` stays a number."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            cur = values
            for key in whole[1].split("."):
                if not isinstance(cur, dict) or key not in cur:
                    break
                cur = cur[key]
            else:
                if not isinstance(cur, (dict, list)):
                    return cur

        def sub(m: re.Match) -> str:
            found, cur = True, values
            for key in m[1].split("."):
                if isinstance(cur, dict) and key in cur:
                    cur = cur[key]
                else:
                    found = False
                    break
            if not found or isinstance(cur, (dict, list)):
                return m[0]
            return _format_scalar(cur)

        return PLACEHOLDER.sub(sub, value)
    if isinstance(value, dict):
        return {k: fill_placeholders(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, values) for v in value]
    return value


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Choice:
    script: Script
    turn: int
    score: float
    match: float


class PlaybackLlm(BaseLlm):
    """One instance per agent (it must know which agent it speaks for)."""

    model: str = PLAYBACK_MODEL
    agent_display_name: str = ""
    fallback_text: str = "Sorry, I didn't catch that. Could you rephrase?"
    scripts: list[Any] = []
    agent_names: dict[str, str] = {}  # display name -> ADK name

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        steps = read_conversation(llm_request.contents or [])
        prior = PRIOR_HISTORY.get()  # the conversation before the runner's window (history_window.py)
        parts, payloads = self._next_parts(steps, prior)
        # Marks "time to first chunk" on ADK's generate_content span.
        trace.get_current_span().add_event("first_chunk")
        if stream:
            for piece in _stream_pieces(parts):
                yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=piece)]), partial=True)
        yield LlmResponse(
            content=types.Content(role="model", parts=parts or [types.Part(text="")]),
            custom_metadata={"ces_payloads": payloads} if payloads else None,
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=sum(_count_words(c) for c in llm_request.contents or []) + (prior.words if prior else 0),
                candidates_token_count=sum(len((p.text or "").split()) + (3 if p.function_call else 0) for p in parts),
            ),
        )

    def choose(self, steps: list[Step], prior: HistoryDigest | None = None) -> Choice | None:
        users = [s.text for s in steps if s.kind == "user"]
        user_count = len(users) + (prior.user_count if prior else 0)
        if prior is not None:
            users = prior.users_tail + users  # the last ones are all that is read
        last_user = max((i for i, s in enumerate(steps) if s.kind == "user"), default=-1)
        done = [(s.name, s.data) for s in steps[last_user + 1:] if s.kind == "call"]
        latest = users[-1] if users else ""
        latest_tokens = tokens(latest)
        best: Choice | None = None
        for script in self.scripts:
            for i, turn in enumerate(script.turns):
                match = similarity(latest, turn.user, latest_tokens, turn.tokens)
                context = 0.0
                for back in (1, 2):
                    if len(users) > back and i >= back:
                        context += similarity(users[-1 - back], script.turns[i - back].user) / 2
                groups_done, explained = _progress(done, turn, self.agent_names)
                in_step = 1.0 if explained else 0.0
                speaker = turn.groups[groups_done][0].agent if groups_done < len(turn.groups) and turn.groups[groups_done] else ""
                agent_ok = 1.0 if speaker == self.agent_display_name else 0.0
                score = match + 0.25 * context + 0.5 * in_step + 0.2 * agent_ok - 0.01 * abs(i - (user_count - 1))
                if best is None or score > best.score:
                    best = Choice(script, i, score, match)
        # A weak match still plays once the turn has begun a script (its calls made), but not
        # after a hand-over alone: a transfer rule's target has no script for "hi" either.
        if best is None or (best.match < MATCH_THRESHOLD and not any(name != TRANSFER_TOOL for name, _ in done)):
            return None
        return best

    def _next_parts(self, steps: list[Step], prior: HistoryDigest | None = None) -> tuple[list[types.Part], list[dict]]:
        choice = self.choose(steps, prior)
        if choice is None:
            return [types.Part(text=self.fallback_text)], []
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s plays %s, turn %d (match %.2f)", self.agent_display_name,
                      choice.script.source or choice.script.name, choice.turn, choice.match)
        last_user = max((i for i, s in enumerate(steps) if s.kind == "user"), default=-1)
        done_calls = [(s.name, s.data) for s in steps[last_user + 1:] if s.kind == "call"]
        done = _progress(done_calls, choice.script.turns[choice.turn], self.agent_names)[0]
        groups = choice.script.turns[choice.turn].groups
        if done >= len(groups):
            return [], []
        call_count = sum(1 for s in steps if s.kind == "call") + (prior.call_count if prior else 0)
        speaker = groups[done][0].agent if groups[done] else ""
        if done == 0 and speaker and speaker != self.agent_display_name and speaker in self.agent_names:
            # The example's next step belongs to another agent (say, a concierge tool asked of the
            # booking agent): hand over first, as a real model would, then that agent plays it.
            args = {"agent_name": self.agent_names[speaker]}
            return [types.Part(function_call=types.FunctionCall(id=f"call_{call_count + 1}", name=TRANSFER_TOOL, args=args))], []
        latest_user = next((s.text for s in reversed(steps) if s.kind == "user"), "")
        # Every tool call's args and response so far, the latest winning: what the user picked
        # (a flight, a seat, its price) reaches later args and payloads, not only the next step.
        latest_response: dict = dict(prior.values) if prior else {}
        for s in steps:
            if s.kind in ("call", "response") and isinstance(s.data, dict):
                latest_response.update(s.data)
        parts: list[types.Part] = []
        payloads: list[dict] = []
        for step in groups[done]:
            if step.kind == "text":
                parts.append(types.Part(text=fill_placeholders(step.text, latest_response)))
            elif step.kind == "payload":
                payloads.append(fill_placeholders(step.data, latest_response))
            elif step.kind in ("call", "transfer"):
                call_count += 1
                name = _call_name(step)
                if step.kind == "transfer":
                    args = {"agent_name": self.agent_names.get(step.name, adk_name(step.name))}
                else:
                    args = adapt_args(step.data or {}, choice.script.turns[choice.turn].user, latest_user)
                    args = fill_placeholders(args, latest_response)
                parts.append(types.Part(function_call=types.FunctionCall(id=f"call_{call_count}", name=name, args=args)))
        return parts, payloads


def _progress(done: list[tuple[str, dict | None]], turn, agent_names: dict[str, str]) -> tuple[int, bool]:
    """How many of `turn`'s step groups the calls made this turn complete, and whether those
    groups explain every call. A hand-over the plan does not make (one made to reach the
    agent that owns a step) is passed over. Another agent's calls may reach us without
    args (None): a transfer there is taken as the planned one."""
    i = groups_done = 0
    for group in turn.groups:
        needed = [s for s in group if s.kind in ("call", "transfer")]
        if not needed:
            break
        matched = 0
        while i < len(done) and matched < len(needed):
            name, args = done[i]
            planned = needed[matched]
            i += 1
            if name == TRANSFER_TOOL and not (
                planned.kind == "transfer"
                and (args is None or agent_names.get(planned.name, adk_name(planned.name)) == args.get("agent_name"))
            ):
                continue
            matched += 1
        if matched < len(needed):
            break
        groups_done += 1
    skipped_handovers_only = all(name == TRANSFER_TOOL for name, _ in done[i:])
    return groups_done, skipped_handovers_only


_VALUE_TOKEN = re.compile(r"[\w.@+-]+")


def adapt_args(args: Any, example_user: str, live_user: str) -> Any:
    """Recorded args that quote the example's user (a flight number, a city)
    take the value the live user said in their place, so a tool sees SW7 when
    the user asked about SW7, not the example's SW123.

    Words are aligned first (difflib over the two utterances: "weather in
    Paris" / "weather in Lyon" swaps Paris for Lyon); an arg the alignment does
    not place takes the most similar new word the user said, if any is close.
    """
    ex_words = _VALUE_TOKEN.findall(example_user)
    live_words = _VALUE_TOKEN.findall(live_user)
    swaps: dict[str, str] = {}
    matcher = difflib.SequenceMatcher(None, [w.lower() for w in ex_words], [w.lower() for w in live_words], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "replace":
            continue
        if i2 - i1 == 1 and j2 - j1 == 1:  # one word swapped for one word
            swaps[ex_words[i1].lower()] = live_words[j1]
            continue
        for word in ex_words[i1:i2]:  # a wider change: pair only look-alikes
            best = max(live_words[j1:j2], key=lambda w: _likeness(w, word))
            if _likeness(best, word) >= 0.4:
                swaps[word.lower()] = best
    example_lower = {w.lower() for w in ex_words}
    fresh = [w for w in live_words if w.lower() not in example_lower]

    def adapt(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: adapt(v) for k, v in value.items()}
        if isinstance(value, list):
            return [adapt(v) for v in value]
        if not isinstance(value, str) or value.lower() not in example_lower:
            return value
        if value.lower() in swaps:
            new = swaps[value.lower()]
        elif fresh:
            new = max(fresh, key=lambda w: _likeness(w, value))
            if _likeness(new, value) < 0.4:
                return value
        else:
            return value
        return new.upper() if value.isupper() else new

    return adapt(args)


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _call_name(step: Step) -> str:
    return TRANSFER_TOOL if step.kind == "transfer" else adk_name(step.name)


def _count_words(content: types.Content) -> int:
    return sum(word_count(p.text) for p in content.parts or [] if p.text)


def _stream_pieces(parts: list[types.Part]) -> list[str]:
    """Text split into a few chunks of whole words, for text streaming."""
    pieces = []
    for part in parts:
        words = (part.text or "").split(" ")
        if not part.text:
            continue
        size = max(1, len(words) // 3)
        pieces += [" ".join(words[i:i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)]
    return pieces
