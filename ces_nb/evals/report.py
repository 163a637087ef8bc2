"""EvalRun and RunComparison -> text and static HTML. One card per case; expected beside observed;
under each failure the real turn cells (span tree included) as the rest of ces_nb draws them.
Every string from a file, an agent or a tool is escaped. No JavaScript; <details> collapses."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from html import escape
from importlib import resources
from typing import Any

from .results import ERROR, FAIL, PASS, SKIPPED


def turn_card_html(turn) -> str:
    """The turn as ces_nb renders it everywhere else: the one place this report points at."""
    from ..render.html import turn_body_html

    return turn_body_html(turn)


@lru_cache(maxsize=1)
def _css() -> str:
    from ..render.html import stylesheet

    return stylesheet() + resources.files("ces_nb.evals").joinpath("static/evals.css").read_text(encoding="utf-8")


def _wrap(body: str, fallback: str) -> str:
    from ..render.html import next_id

    return (f'<div class="ces-root" id="{next_id("ces-eval")}"><style>{_css()}</style>'
            f'<pre class="ces-fallback" hidden="hidden">{escape(fallback)}</pre>{body}</div>')


def _e(value: Any) -> str:
    return escape(str(value))


def _value(value: Any) -> str:
    if value is None:
        return '<span class="ces-eval-note">—</span>'
    if isinstance(value, str):
        return f"<pre>{escape(value)}</pre>"
    return f"<pre>{escape(json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=str))}</pre>"


def _badge(outcome: str) -> str:
    return f'<span class="ces-eval-{outcome.lower()}">{_e(outcome)}</span>'


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} ms"


# -- text -------------------------------------------------------------------------------------

def _rule(marker: dict) -> str:
    from .matching import expected_value

    kind, want = marker.get("$matchType"), expected_value(marker)
    if kind == "ignore":
        return "ignored"
    if kind == "regexp":
        return f"regexp /{want}/"
    if kind == "semantic":
        return f"semantic ≈ {str(want)!r}"
    if kind == "contains":
        return f"contains {str(want)!r}"
    return f"exact = {json.dumps(want, ensure_ascii=False)}"


class Rule(str):
    """A `$matchType` marker in words: shown as it is, not as a quoted JSON string."""


def pretty(value: Any, indent: int = 0) -> str:
    """A shown value as YAML-like lines: rules as they read, other strings quoted, no nulls."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in sorted(value.items(), key=lambda kv: str(kv[0])):  # sorted: the same text from run to run
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{pretty(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {pretty(v, 0)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        return "\n".join(f"{pad}- {pretty(v, indent + 1).lstrip()}" for v in value)
    if isinstance(value, Rule):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def shown_value(value: Any) -> Any:
    """A value as the report shows it: `$matchType` markers as readable rules, null fields hidden."""
    if isinstance(value, dict):
        if "$matchType" in value:
            return Rule(_rule(value))
        return {k: shown_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [shown_value(v) for v in value]
    return value


def rule_text(e) -> str:
    """What an expectation asks for, in words: "semantic ≈ 'foo'", "regexp /^refund/", a call."""
    want = e.expected
    if e.kind == "agent_response":
        limit = re.search(r"passes at (\d+(?:\.\d+)?)", e.explanation or "")
        return {"semantic": f"semantic ≈ {str(want)!r}" + (f" (≥{float(limit[1]):g})" if limit else ""), "exact": f"exact = {str(want)!r}", "contains": f"contains {str(want)!r}",
                "not_contains": f"does not contain {str(want)!r}", "regexp": f"regexp /{want}/",
                "endswith": f"ends with {str(want)!r}"}.get(e.match, clip(want))
    if e.kind in ("tool_call", "end_session") and isinstance(want, dict):
        tool = want.get("tool") if e.kind == "tool_call" else "end_session"
        args = want.get("args") if e.kind == "tool_call" else want
        if args is None:
            return f"{tool or 'a tool'} called"
        inner = ", ".join(f"{k}: {v if isinstance(v, Rule) else json.dumps(v, ensure_ascii=False, default=str)}"
                          for k, v in shown_value(args).items())
        return f"{tool or 'any tool'}({inner})" + (" (args include)" if e.match == "subset" else "")
    if e.kind == "agent_transfer":
        return f"transfer to {want}"
    if e.kind in ("tool_response", "tool_variables") and isinstance(want, dict) and "path" in want:
        return f"{want['path']} {want.get('operator')} {json.dumps(want.get('value'), ensure_ascii=False, default=str)}"
    return clip(shown_value(want))


def observed_value(e) -> Any:
    """What was observed, as the report shows it: a transfer by name, a call without empty fields."""
    seen = e.observed
    if e.kind == "agent_transfer" and isinstance(seen, list):
        return ", ".join(map(str, seen)) if seen else None
    return shown_value(seen)


def observed_plain(e) -> Any:
    seen = observed_value(e)
    if e.kind == "tool_call" and isinstance(seen, dict) and "tool" in seen:
        args = seen.get("args")
        return f"{seen['tool']}({clip(args) if args is not None else ''})"
    return "nothing" if seen is None else seen


def clip(value: Any, limit: int = 160) -> str:
    """A value on one line, cut short: what a failure message quotes."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def failure_lines(e, indent: str = "") -> list[str]:
    """A failed expectation: what was wrong, then what was expected and what the agent did."""
    out = [f"{indent}turn {e.turn} {e.kind} ({e.at}): {e.explanation or 'failed'}"]
    if e.expected is not None:
        out.append(f"{indent}    expected: {rule_text(e)}")
    out.append(f"{indent}    observed: {clip(observed_plain(e))}")
    return out


def run_text(run, cases: bool = True) -> str:
    counts = run.counts()
    head = (f"EvalRun: {len(run.cases)} case(s): {counts[PASS]} passed, {counts[FAIL]} failed, "
            f"{counts[ERROR]} errors, {counts[SKIPPED]} skipped")
    judge = run.meta.get("judge")
    lines = [head] + ([f"judge: {judge}"] if judge else [])
    for c in run.cases:
        failed = [e for e in c.expectations if e.outcome in (FAIL, ERROR)]
        if not cases and not failed and not c.error:
            continue
        lines.append(f"  {c.outcome:<7} {c.key}")
        for e in failed:
            lines.extend(failure_lines(e, " " * 10))
        if c.error:
            lines.append(f"          error: {c.error}")
    return "\n".join(lines)


def comparison_text(cmp) -> str:
    lines = [f"RunComparison: {len(cmp.regressions)} pass→fail, {len(cmp.fixed)} fail→pass"]
    elsewhere = [r for r in cmp.changes if r["change"] in ("new", "gone")]
    for r in cmp.changes:
        if r not in elsewhere:
            lines.append(f"  {r['change']:<9} {r['conversation']} turn {r['turn']} {r['kind']}: {r['explanation']}")
    if elsewhere:
        gone = sum(r["change"] == "gone" for r in elsewhere)
        lines.append(f"  {len(elsewhere) - gone} new and {gone} gone expectation(s) in "
                     f"{len({r['conversation'] for r in elsewhere})} case(s) only one of the runs has (see .frame)")
    for problem in cmp.latency_regressions():
        lines.append(f"  latency   {problem}")
    return "\n".join(lines)


# -- HTML -------------------------------------------------------------------------------------

def match_label(e) -> str:
    """The match an expectation's row names: the real one (a rubric is LLM-judged; a call's args
    by the `$matchType`s they hold), not the default."""
    if e.kind in ("rubric", "scenario"):
        return "LLM judge" if e.kind == "rubric" else "simulated user"
    if e.kind in ("tool_call", "end_session") and isinstance(e.expected, dict):
        found: set[str] = set()

        def walk(v):
            if isinstance(v, dict):
                if "$matchType" in v:
                    found.add(str(v["$matchType"]))
                    return
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
        walk(e.expected.get("args") if e.kind == "tool_call" else e.expected)
        found.discard("ignore")
        if e.match == "subset":
            return "args include"
        return " + ".join(sorted(found)) if found else "exact"
    if e.kind in ("tool_response", "tool_variables"):
        return f"JSONPath · {e.match}"
    return e.match or ""


def _shown(value: Any) -> str:
    if value is None:
        return '<span class="ces-eval-note">—</span>'
    if isinstance(value, str) and not isinstance(value, Rule):
        return f"<pre>{escape(value)}</pre>"
    return f"<pre>{escape(pretty(value))}</pre>"


def _expected_cell(e) -> str:
    if e.kind == "agent_response" or (e.kind in ("tool_response", "tool_variables") and isinstance(e.expected, dict)):
        return f"<span class='ces-eval-rule'>{_e(rule_text(e))}</span>"
    if e.kind == "agent_transfer":
        return _value(e.expected)
    return _shown(shown_value(e.expected))


def _colgroup(widths: list[str]) -> str:
    return "<colgroup>" + "".join(f'<col style="width:{w}">' if w else "<col>" for w in widths) + "</colgroup>"


def _expectation_rows(case) -> str:
    rows = []
    explanations = [e.explanation for e in case.expectations]
    shared = explanations[0] if len(explanations) > 1 and len(set(explanations)) == 1 and explanations[0] else ""
    for e in case.expectations:
        cls = ' class="ces-eval-row-fail"' if e.outcome in (FAIL, ERROR) else ""
        score = "" if e.score is None else f"{e.score:.2f}"
        label = match_label(e)
        why = "" if shared else _e(e.explanation)
        rows.append(f"<tr{cls}><td>{_e(e.turn or '')}</td><td>{_e(e.kind)}<br><span class='ces-eval-note'>{_e(e.metric)}"
                    f"{(' · ' + _e(label)) if label else ''}</span></td><td>{_expected_cell(e)}</td><td>{_shown(observed_value(e))}</td>"
                    f"<td>{_badge(e.outcome)}<br>{_e(score)}</td><td>{why}{'<br>' if why else ''}"
                    f"<span class='ces-eval-note'>{_e(e.at)}</span></td></tr>")
    note = f"<div class='ces-eval-note'>{_e(shared)}</div>" if shared else ""
    return (note + "<div class='ces-eval-scroll'><table class='ces-eval-table'>"
            + _colgroup(["3.5em", "11em", "", "", "6em", "24%"])
            + "<thead><tr><th>turn</th><th>kind</th><th>expected</th><th>observed</th><th>outcome</th>"
            "<th>why · where</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _failed_turns(case) -> str:
    turns = sorted({e.turn for e in case.expectations if e.outcome in (FAIL, ERROR) and e.turn})
    parts = []
    for number in turns:
        cards = "".join(turn_card_html(t) for t in case.turn_objects(number))
        if cards:
            parts.append(f"<details open><summary>turn {number} as the agent answered it</summary>"
                         f"<div class='ces-eval-turns'>{cards}</div></details>")
    return "".join(parts)


def case_html(case) -> str:
    failed = case.outcome in (FAIL, ERROR)
    open_ = " open" if failed else ""
    tags = " ".join(f'<span class="ces-chip">{_e(t)}</span>' for t in case.tags)
    latency = f" <span>{_e(_ms(case.latency_ms))}</span>" if case.latency_ms is not None else ""
    body = [f'<details class="ces-eval-card"{open_}><summary>{_badge(case.outcome)} <b>{_e(case.name)}</b> '
            f'<span class="ces-eval-note">{_e(case.kind)} · {_e(case.key.split("::", 1)[0])}</span> {tags}{latency}</summary>']
    if case.description:
        body.append(f"<div class='ces-eval-note ces-eval-desc'>{_e(case.description)}</div>")
    if case.error:
        body.append(f'<div class="ces-error">{_e(case.error)}</div>')
    body.append(_expectation_rows(case))
    for note in case.notes:
        body.append(f"<div class='ces-eval-note'>{_e(note)}</div>")
    if failed:
        body.append(_failed_turns(case))
    body.append("</details>")
    return "".join(body)


def run_html(run, text: str | None = None) -> str:
    counts = run.counts()
    judge = run.meta.get("judge", "")
    head = (f'<div class="ces-head"><b>Evaluation</b> <span>{len(run.cases)} case(s)</span> '
            f'{_badge(PASS)} {counts[PASS]} {_badge(FAIL)} {counts[FAIL]} {_badge(ERROR)} {counts[ERROR]} '
            f'{_badge(SKIPPED)} {counts[SKIPPED]}</div>')
    where = " · ".join(_e(run.meta[k]) for k in ("app",) if run.meta.get(k))
    meta = f"<div class='ces-eval-note'>{where}{' · judge: ' + _e(judge) if judge else ''}</div>"
    order = sorted(run.cases, key=lambda c: (c.outcome not in (FAIL, ERROR), run.cases.index(c)))  # failures first
    return _wrap(head + meta + "".join(case_html(c) for c in order), run_text(run) if text is None else text)


def _change_row(r: dict) -> str:
    cls = ' class="ces-eval-row-fail"' if r["change"] == "pass→fail" else ""
    return (f"<tr{cls}><td>{_e(r['change'])}</td><td>{_e(r['conversation'])}</td><td>{_e(r['turn'])}</td>"
            f"<td>{_e(r['kind'])}</td><td>{_shown(shown_value(r['expected']))}</td><td>{_shown(shown_value(r['observed_before']))}</td>"
            f"<td>{_shown(shown_value(r['observed_after']))}</td><td>{_e(r['explanation'])}</td></tr>")


def _change_table(rows: list[dict]) -> str:
    return ("<div class='ces-eval-scroll'><table class='ces-eval-table ces-eval-compare'>"
            + _colgroup(["6.5em", "18em", "3.5em", "8em", "", "", "", "18%"])
            + "<thead><tr><th>change</th><th>case</th><th>turn</th><th>kind</th><th>expected</th><th>before</th><th>after</th>"
            "<th>why</th></tr></thead><tbody>" + "".join(_change_row(r) for r in rows) + "</tbody></table></div>")


def comparison_html(cmp, text: str | None = None) -> str:
    changed = [r for r in cmp.changes if r["change"] in ("pass→fail", "fail→pass")]
    elsewhere = [r for r in cmp.changes if r["change"] not in ("pass→fail", "fail→pass")]
    changes = _change_table(changed) if changed else "<div class='ces-eval-note'>no expectation changed outcome</div>"
    if elsewhere:  # the two runs covered different cases: a summary, collapsed, not rows above the real changes
        gone = sum(r["change"] == "gone" for r in elsewhere)
        new = len(elsewhere) - gone
        cases = len({r["conversation"] for r in elsewhere})
        changes += (f"<details class='ces-eval-more'><summary>{new} new and {gone} gone expectation(s) in {cases} case(s) "
                    f"only one of the runs has</summary>{_change_table(elsewhere)}</details>")
    latency = cmp.latency
    lat_rows = []
    slow = {p.split(":", 1)[0] for p in cmp.latency_regressions()}
    for kind, row in (latency.iterrows() if len(latency) else []):
        cls = ' class="ces-eval-row-fail"' if kind in slow else ""
        cells = "".join(f"<td>{_ms(row[f'p{q}_before'])} → {_ms(row[f'p{q}_after'])}<br>Δ {_ms(row[f'p{q}_delta'])} "
                        f"<span class='ces-eval-note'>(95% CI {_ms(row[f'p{q}_ci_low'])} … {_ms(row[f'p{q}_ci_high'])})</span></td>"
                        for q in (50, 90))
        lat_rows.append(f"<tr{cls}><td>{_e(kind)}</td><td>{int(row['n_before'])} / {int(row['n_after'])}</td>{cells}</tr>")
    lat = ("<div class='ces-eval-scroll'><table class='ces-eval-table ces-eval-latency'>" + _colgroup(["9em", "6em", "", ""])
           + "<thead><tr><th>span kind</th><th>n</th><th>p50</th><th>p90</th></tr></thead><tbody>" + "".join(lat_rows)
           + "</tbody></table></div>") if lat_rows else ""
    head = (f'<div class="ces-head"><b>Comparison</b> <span>{len(cmp.regressions)} pass→fail</span> '
            f'<span>{len(cmp.fixed)} fail→pass</span></div>')
    return _wrap(head + changes + "<div class='ces-eval-note'>latency by span kind (baseline → this run)</div>" + lat,
                 comparison_text(cmp) if text is None else text)
