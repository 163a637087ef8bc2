"""Turn -> self-contained static HTML: readable with no kernel and no JavaScript.

Every string from the agent, a tool, a citation or the user goes through
`html.escape` (or markdown + nh3 for agent text). Google search suggestion HTML
is only ever placed, escaped, in a sandboxed iframe's srcdoc. Collapsing uses
<details>, so nbconvert/nbviewer exports work. Ids come from a counter.
"""

from __future__ import annotations

import base64
import itertools
import json
from functools import lru_cache
from html import escape
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..convert.otel import SPAN_KINDS
from .markdown import markdown_html
from .text import broken_message, integral, transcript_text, turn_text, unreadable

if TYPE_CHECKING:  # for the annotations only: renderers read records, and import none (model.py calls them)
    from ..model import Span, ToolResult, Transcript, Turn, UserInput

_ids = itertools.count(1)
_SAFE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
KEY_ATTRIBUTES = ("name", "agent", "model", "stage", "tool call id", "input token count", "output token count",
                  "time to first chunk (ms)", "voice")
MAX_ATTR_TEXT = 80


def next_id(prefix: str = "ces") -> str:
    """Deterministic element ids: a per-process counter, never uuid or time."""
    return f"{prefix}-{next(_ids)}"


@lru_cache(maxsize=1)
def stylesheet() -> str:
    return resources.files("ces_nb.render").joinpath("static/ces.css").read_text(encoding="utf-8")


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _safe_url(uri: str) -> str | None:
    u = uri.strip()
    return u if u.lower().startswith(("http://", "https://")) else None


def _link(uri: str, text: str | None = None) -> str:
    url = _safe_url(uri)
    label = _e(text if text is not None else uri)
    if url is None:
        return label
    return f'<a href="{_e(url)}" target="_blank" rel="noopener noreferrer nofollow">{label}</a>'


# -- JSON ------------------------------------------------------------------------

def json_tree_html(value: Any, open_levels: int = 1, _depth: int = 0) -> str:
    """A collapsible, escaped JSON tree (<details> per object/array)."""
    if isinstance(value, dict) or isinstance(value, list):
        if not value:
            return "{}" if isinstance(value, dict) else "[]"
        if _depth > 40:
            return f'<span class="ces-s">{_e(json.dumps(value, ensure_ascii=False))}</span>'
        # Sorted: protobuf Struct maps come back in a per-process order, and output must not.
        items = sorted(value.items(), key=lambda kv: str(kv[0])) if isinstance(value, dict) else enumerate(value)
        brackets = ("{", "}") if isinstance(value, dict) else ("[", "]")
        rows = []
        for k, v in items:
            key = f'<span class="ces-k">{_e(json.dumps(k, ensure_ascii=False) if isinstance(k, str) else k)}</span>: '
            rows.append(f'<div class="ces-row">{key}{json_tree_html(v, open_levels, _depth + 1)}</div>')
        opened = " open" if _depth < open_levels else ""
        return (f"<details{opened}><summary>{brackets[0]} {len(value)} {'keys' if isinstance(value, dict) else 'items'}"
                f"</summary>{''.join(rows)}{brackets[1]}</details>")
    if isinstance(value, str):
        return f'<span class="ces-s">{_e(json.dumps(value, ensure_ascii=False))}</span>'
    return f'<span class="ces-n">{_e(json.dumps(integral(value)))}</span>'


def _pre_json(value: Any) -> str:
    return f'<pre class="ces-pre">{_e(json.dumps(integral(value), ensure_ascii=False, indent=1, sort_keys=True))}</pre>'


# -- pieces of a turn ---------------------------------------------------------------

def input_html(item: UserInput) -> str:
    v = item.value
    if item.kind == "text":
        return f"<span>{_e(v)}</span>"
    if item.kind in ("dtmf", "event"):
        return f'<span class="ces-chip">{item.kind}</span> <span>{_e(v)}</span>'
    if item.kind == "variables":
        return f'<span class="ces-chip">variables</span><code>{_e(json.dumps(integral(v), ensure_ascii=False, sort_keys=True))}</code>'
    if item.kind == "image":
        mime, data = v
        if mime in _SAFE_IMAGES:
            b64 = base64.b64encode(data).decode("ascii")
            return f'<span class="ces-chip">image</span><img class="ces-thumb" alt="image input" src="data:{mime};base64,{b64}">'
        return f'<span class="ces-chip">image</span>{_e(mime)}, {len(data)} bytes'
    if item.kind == "blob":
        return f'<span class="ces-chip">blob</span>{_e(v[0])}, {len(v[1])} bytes'
    if item.kind == "audio":
        if v[:4] == b"RIFF":  # the client keeps what it sent as WAV
            b64 = base64.b64encode(v).decode("ascii")
            return f'<span class="ces-chip">audio</span><audio controls preload="none" src="data:audio/wav;base64,{b64}"></audio>'
        return f'<span class="ces-chip">audio</span>{len(v)} bytes'
    if item.kind == "tool_responses":
        rows = "".join(
            f"<tr><td>{_e(r.id)}</td><td>{_e(r.display_name or r.tool.rsplit('/', 1)[-1])}</td><td>{_pre_json(r.response)}</td></tr>"
            for r in v
        )
        return ('<span class="ces-chip">tool responses</span><table class="ces-table"><tr><th>id</th><th>tool</th>'
                f"<th>response</th></tr>{rows}</table>")
    return f'<span class="ces-chip">{_e(item.kind)}</span>'


def tool_calls_html(turn: Turn) -> str:
    calls = turn.tool_calls
    if not calls:
        return ""
    rows = "".join(f"<tr><td>{_e(c.id)}</td><td>{_e(c.name)}</td><td>{_pre_json(c.args)}</td></tr>" for c in calls)
    return (f'<div class="ces-section ces-tools"><span class="ces-label">tool calls</span>'
            f'<table class="ces-table"><tr><th>id</th><th>tool</th><th>args</th></tr>{rows}</table></div>')


def citations_html(citations: list) -> str:
    cards = []
    for i, c in enumerate(citations, 1):
        attribution = '<div class="ces-attr">attribution required</div>' if c.requires_attribution else ""
        cards.append(
            f'<div class="ces-card"><div><b>[{i}]</b> {_link(c.uri, c.title or c.uri)}</div>'
            f'<div class="ces-uri">{_e(c.uri)}</div><div>{_e(c.text)}</div>{attribution}</div>'
        )
    return f'<div class="ces-cards">{"".join(cards)}</div>' if cards else ""


def suggestions_html(turn: Turn) -> str:
    parts = []
    for s in turn.search_suggestions:
        for h in s.htmls:
            # Never inline: the search entry point's HTML lives, escaped, in a script-less sandbox.
            parts.append(f'<iframe class="ces-suggest" sandbox="" title="Google search suggestions" srcdoc="{_e(h)}"></iframe>')
        if s.queries:
            parts.append('<div class="ces-events">searched: ' + ", ".join(_link(q["uri"], q["query"]) for q in s.queries) + "</div>")
    return f'<div class="ces-section">{"".join(parts)}</div>' if parts else ""


def audio_html(turn: Turn) -> str:
    data = turn.audio
    if not data:
        return ""
    from ..audio import to_wav

    try:
        wav = to_wav(data, turn.audio_encoding, turn.audio_sample_rate)
    except Exception as exc:  # undecodable audio must not hide the rest of the turn
        return f'<div class="ces-error">audio ({len(data)} bytes) could not be decoded: {_e(exc)}</div>'
    b64 = base64.b64encode(wav).decode("ascii")
    return f'<div class="ces-section"><audio controls preload="none" src="data:audio/wav;base64,{b64}"></audio></div>'


VOICE_KINDS = ("VAD", "ASR", "TTS")


def voice_timeline_html(turn: Turn) -> str:
    """Under the players: the turn's top-level spans on one time scale, so speech, recognition,
    the model and synthesis line up with the audio."""
    root = turn.root_span
    if root is None or not any(c.kind in VOICE_KINDS for c in root.children):
        return ""
    total = root.duration_ns or 0
    rows = "".join(f'<div class="ces-sl ces-k-{c.kind.lower() if c.kind in SPAN_KINDS else "other"}">'
                   f"{_span_row(c, root.start_ns, total, False)}</div>"
                   for c in sorted(root.children, key=lambda c: c.start_ns or 0))
    return f'<div class="ces-section ces-spans"><span class="ces-label">timeline</span>{rows}</div>'


def span_tree_html(root: Span, open_depth: int = 1) -> str:
    """One row per span: name, key attributes, duration, and a bar scaled to the root.

    Built iteratively so a 10 000-span (or very deep) tree renders fast and never
    hits the recursion limit."""
    origin = root.start_ns
    total = root.duration_ns or 0
    out: list[str] = []
    append = out.append
    # (span, depth) to open, or None meaning "close a <details>"
    stack: list[Any] = [(root, 0)]
    while stack:
        item = stack.pop()
        if item is None:
            append("</details>")
            continue
        span, depth = item
        row = _span_row(span, origin, total, root is span)
        kind = span.kind
        kind = f"ces-k-{kind.lower()}" if kind in SPAN_KINDS else "ces-k-other"
        if span.children:
            append(f'<details class="{kind}"{" open" if depth < open_depth else ""}><summary>{row}</summary>')
            stack.append(None)
            stack.extend((c, depth + 1) for c in reversed(span.children))
        else:
            append(f'<div class="ces-sl {kind}">{row}</div>')
    return f'<div class="ces-spans">{"".join(out)}</div>'


def _span_row(span: Span, origin: int | None, total: int, is_root: bool) -> str:
    attrs = span.attributes
    shown = []
    for key in KEY_ATTRIBUTES:
        value = attrs.get(key)
        if value is not None and value != "":
            if isinstance(value, str):
                text = value
            elif type(value) in (int, float):
                text = str(integral(value))
            else:
                text = json.dumps(integral(value), ensure_ascii=False)
            if len(text) > MAX_ATTR_TEXT:
                text = text[: MAX_ATTR_TEXT - 1] + "…"
            shown.append(f"{key}={text}")
    extra = ""
    if is_root and isinstance(attrs.get("perceived latency (ms)"), (int, float)):
        extra = f'<span class="ces-pl">perceived latency {attrs["perceived latency (ms)"]:.1f} ms</span>'
    duration = span.duration_ns
    bar = ""
    if total and duration is not None:
        offset = ((span.start_ns - origin) / total * 100) if (span.start_ns is not None and origin is not None) else 0.0
        bar = f'<span class="ces-bar"><i style="--o:{offset:.1f};--w:{duration / total * 100:.1f}"></i></span>'
    dur = f"{duration / 1e6:.1f} ms" if duration is not None else ""
    return (f'<span class="ces-sn">{_e(span.name)}</span>{extra}<span class="ces-sa">{_e(" ".join(shown))}</span>'
            f'<span class="ces-sd">{dur}</span>{bar}')


# -- whole objects -------------------------------------------------------------------

def _wrap(body: str, fallback: str, *, css: bool = True) -> str:
    style = f"<style>{stylesheet()}</style>" if css else ""
    return f'<div class="ces-root" id="{next_id()}">{style}<pre class="ces-fallback" hidden="hidden">{_e(fallback)}</pre>{body}</div>'


def turn_body_html(turn: Turn) -> str:
    """One turn; a turn that cannot be drawn becomes an error card, so the turns around it still show."""
    try:
        return _turn_body_html(turn)
    except Exception as exc:
        return (f'<div class="ces-turn"><div class="ces-head"><b>Turn {_e(turn.index)}</b>'
                f'<span class="ces-badge ces-partial">unreadable</span></div>'
                f'<div class="ces-error">{_e(broken_message(turn, exc))}</div></div>')


def _turn_body_html(turn: Turn) -> str:
    return "".join([_head_html(turn), *(section(turn) for section in _SECTIONS), "</div>"])


def _head_html(turn: Turn) -> str:
    if unreadable(turn):
        status = "unreadable"
    else:
        status = "partial" if turn.partial else ("completed" if turn.completed else "waiting for tool responses" if turn.tool_calls else "open")
    badge_class = "ces-badge ces-partial" if turn.partial or turn.load_errors else "ces-badge"
    return f'<div class="ces-turn"><div class="ces-head"><b>Turn {turn.index}</b> <span class="{badge_class}">{_e(status)}</span></div>'


def _problems_html(turn: Turn) -> str:
    return "".join(f'<div class="ces-error">could not read {_e(problem)}; left out</div>' for problem in turn.load_errors)


def _user_html(turn: Turn) -> str:
    if not (turn.inputs or turn.heard):
        return ""
    heard = f'<div><span class="ces-chip">heard</span>{_e(turn.heard)}</div>' if turn.heard else ""
    return '<div class="ces-user"><span class="ces-label">user</span> ' + " ".join(input_html(i) for i in turn.inputs) + heard + "</div>"


def _agent_html(turn: Turn) -> str:
    text = turn.text
    agent = f'<div class="ces-agent"><span class="ces-label">agent</span><div class="ces-md">{markdown_html(text)}</div></div>' if text else ""
    return agent + "".join(f'<div class="ces-transfer">→ transferred to {_e(t.get("display_name") or t.get("target_agent"))}</div>'
                           for t in turn.transfers)


def _barge_in_html(turn: Turn) -> str:
    if not turn.interrupted:
        return ""
    at = turn.interrupted_at_ms
    where = f" {at / 1000:.1f} s into its reply" if at is not None else ""
    return f'<div class="ces-transfer">⏹ barge-in: the user spoke over the agent, which stopped{where}</div>'


def _citations_of_html(turn: Turn) -> str:
    return citations_html(turn.citations)


def _payloads_html(turn: Turn) -> str:
    return "".join(f'<div class="ces-section ces-json"><span class="ces-label">payload</span>{json_tree_html(p)}</div>' for p in turn.payloads)


def _end_html(turn: Turn) -> str:
    if turn.end_session is None:
        return ""
    meta = f" {_pre_json(turn.end_session)}" if turn.end_session else ""
    return f'<div class="ces-end">■ session ended{meta}</div>'


def _events_html(turn: Turn) -> str:
    """Bidi events other than recognition and barge-in (shown above), e.g. go_away."""
    events = [e for e in turn.events if "recognition_result" not in e and "interruption_signal" not in e]
    if not events:
        return ""
    return '<div class="ces-events">' + "<br>".join(_e(json.dumps(e, ensure_ascii=False, sort_keys=True)) for e in events) + "</div>"


def _notes_html(turn: Turn) -> str:
    error = f'<div class="ces-error">{_e(turn.error)}</div>' if turn.error else ""
    return error + "".join(f'<div class="ces-transfer">{_e(note)}</div>' for note in turn.notes)


def _spans_html(turn: Turn) -> str:
    if turn.root_span is None:
        return ""
    return f'<details class="ces-section"><summary>spans</summary>{span_tree_html(turn.root_span)}</details>'


# The turn's card, section by section, in this order (text.py's _SECTIONS is the same turn as text).
_SECTIONS = (_problems_html, _user_html, _agent_html, audio_html, _barge_in_html, voice_timeline_html, tool_calls_html,
             _citations_of_html, suggestions_html, _payloads_html, _end_html, _events_html, _notes_html, _spans_html)


def turn_html(turn: Turn, text: str | None = None) -> str:
    """The turn, then any turns that answered its tool calls automatically.
    `text`: the text/plain, when the caller has it already (the hidden fallback)."""
    body = "".join(turn_body_html(t) for t in turn.chain)
    return _wrap(body, "\n".join(turn_text(t) for t in turn.chain) if text is None else text)


def tool_result_html(result: ToolResult, text: str) -> str:
    mocked = '<span class="ces-badge">mocked</span>' if result.mocked else ""
    body = (f'<div class="ces-turn"><div class="ces-head"><b>tool</b><code>{_e(result.name)}</code>{mocked}</div>'
            f'<table class="ces-table"><tr><th>args</th><td>{_pre_json(result.args)}</td></tr>'
            f'<tr><th>response</th><td class="ces-json">{json_tree_html(result.response, open_levels=2)}</td></tr>'
            + (f"<tr><th>variables</th><td>{_pre_json(result.variables)}</td></tr>" if result.variables else "")
            + f"</table>{citations_html(result.citations)}</div>")
    return _wrap(body, text)


def transcript_html(transcript: Transcript, text: str | None = None) -> str:
    head = f'<div class="ces-head"><b>Transcript</b> <span>{_e(transcript.session or "(unsaved)")}</span> <span>{len(transcript.turns)} turn(s)</span></div>'
    head += "".join(f'<div class="ces-error">could not read {_e(problem)}; left out</div>' for problem in transcript.load_errors)
    return _wrap(head + "".join(turn_body_html(t) for t in transcript.turns), transcript_text(transcript) if text is None else text)


def client_html(client) -> str:
    kind = "emulator" if client.emulator else "CES"
    body = (f'<div class="ces-turn"><div class="ces-head"><b>ces_nb client</b> <span class="ces-badge">{kind}</span></div>'
            f'<div>endpoint <code>{_e(client.target)}</code></div><div>app <code>{_e(client.app or "(none)")}</code></div></div>')
    return _wrap(body, repr(client))


def note_html(text: str) -> str:
    """A command's confirmation (%cescmd save, break, mock)."""
    return _wrap(f'<div class="ces-note">{_e(text)}</div>', text)


def session_html(session) -> str:
    pending = session.pending
    state = "ended" if session.ended else (f"{len(pending)} tool call(s) pending" if pending else "open")
    config = {k: v for k, v in session.config.items() if v not in (None, "", [], {})}
    conf = f"<div>config <code>{_e(json.dumps(config, default=str, sort_keys=True))}</code></div>" if config else ""
    body = (f'<div class="ces-turn"><div class="ces-head"><b>session</b> <span class="ces-badge">{_e(state)}</span>'
            f"<span>{len(session.turns)} turn(s)</span></div><div><code>{_e(session.name)}</code></div>{conf}</div>")
    return _wrap(body, repr(session))


def diff_html(diff, text: str) -> str:
    """Two runs side by side, one row per difference."""
    def cell(value) -> str:
        if isinstance(value, str):
            return f"<td>{_e(value)}</td>"
        return f"<td>{_pre_json(value)}</td>"

    left, right = diff.left.session or "left", diff.right.session or "right"
    if not diff.differences:
        body = f'<div class="ces-turn">no differences across {len(diff.left.turns)} turn(s)</div>'
    else:
        rows = "".join(f"<tr><td>{d.turn}</td><td>{_e(d.field)}</td>{cell(d.left)}{cell(d.right)}</tr>" for d in diff.differences)
        body = (f'<div class="ces-turn"><div class="ces-head"><b>diff</b> <span>{len(diff.differences)} difference(s)</span></div>'
                f'<table class="ces-table"><tr><th>turn</th><th>what</th><th>{_e(left.rsplit("/", 1)[-1])}</th>'
                f"<th>{_e(right.rsplit('/', 1)[-1])}</th></tr>{rows}</table></div>")
    return _wrap(body, text)
