"""Static rendering: every output kind shows, hostile strings stay inert, output is deterministic."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
import subprocess
import sys

import soundfile
from google.cloud import ces_v1

from ces_nb.convert.session_output import turn_from_outputs
from ces_nb.model import Transcript, Turn
from ces_nb.render.html import span_tree_html, turn_html
from test_model import full_outputs

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'
JS_URI = "javascript:alert(3)"


def test_every_output_kind_appears_in_html():
    inputs = [ces_v1.SessionInput(text="Hi there"), ces_v1.SessionInput(dtmf="12#"), ces_v1.SessionInput(event=ces_v1.Event(event="welcome")),
              ces_v1.SessionInput(variables={"customer_name": "Ada"}),
              ces_v1.SessionInput(image=ces_v1.Image(mime_type="image/png", data=b"\x89PNG\r\n\x1a\nabc"))]
    html = turn_html(turn_from_outputs(full_outputs(), inputs))
    # user input, in order: text, dtmf, event, variables, image thumbnail
    assert "Hi there" in html and "12#" in html and "welcome" in html and "customer_name" in html
    assert '<img class="ces-thumb" alt="image input" src="data:image/png;base64,' in html
    assert "<strong>there</strong>" in html  # markdown rendered
    assert '<audio controls preload="none" src="data:audio/wav;base64,' in html
    assert "select_seat" in html and "c1" in html and "aisle" in html  # tool call table
    assert 'href="https://x.example/b"' in html and "attribution required" in html  # citation card
    assert '<iframe class="ces-suggest" sandbox=""' in html and "denver snow" in html
    assert "boarding_pass" in html and "<details" in html  # payload tree
    assert "session ended" in html and "reason" in html
    assert "transferred to Booking Agent" in html
    assert "perceived latency 120.5 ms" in html and 'class="ces-spans"' in html
    assert "get_flight_status" in html  # a span's key attribute
    html = html.split('<pre class="ces-fallback" hidden="hidden">', 1)[1].split("</pre>", 1)[1]
    order = [html.index(s) for s in ("Hi there", "<strong>there</strong>", "<audio", "ces-tools", "ces-cards", "ces-suggest",
                                     "boarding_pass", "session ended", "ces-spans")]
    assert order == sorted(order)


def test_audio_player_holds_a_real_wav():
    pcm = (b"\x00\x10" * 800)
    turn = turn_from_outputs([ces_v1.SessionOutput(audio=pcm, turn_index=1)])
    turn.audio_sample_rate = 8000
    b64 = re.search(r'src="data:audio/wav;base64,([^"]+)"', turn_html(turn)).group(1)
    data, rate = soundfile.read(io.BytesIO(base64.b64decode(b64)), dtype="int16")
    assert rate == 8000 and len(data) == 800 and data[0] == 0x1000


def hostile_turn() -> Turn:
    outputs = [
        ces_v1.SessionOutput(text=f"{HOSTILE} [click]({JS_URI}) <a href='{JS_URI}'>x</a>", turn_index=1),
        ces_v1.SessionOutput(turn_index=1, tool_calls=ces_v1.ToolCalls(tool_calls=[
            ces_v1.ToolCall(id=HOSTILE, tool="t", display_name=HOSTILE, args={HOSTILE: HOSTILE})])),
        ces_v1.SessionOutput(turn_index=1, citations=ces_v1.Citations(cited_chunks=[
            ces_v1.Citations.CitedChunk(title=HOSTILE, uri=JS_URI, text=HOSTILE)])),
        ces_v1.SessionOutput(turn_index=1, google_search_suggestions=ces_v1.GoogleSearchSuggestions(
            htmls=[f"<div>{HOSTILE}</div>"], web_search_queries=[ces_v1.WebSearchQuery(query=HOSTILE, uri=JS_URI)])),
        ces_v1.SessionOutput(turn_index=1, payload={HOSTILE: [HOSTILE, {"k": HOSTILE}]}),
        ces_v1.SessionOutput(turn_index=1, end_session=ces_v1.EndSession(metadata={"why": HOSTILE}), turn_completed=True,
                             diagnostic_info=ces_v1.SessionOutput.DiagnosticInfo(root_span=ces_v1.Span(
                                 name=HOSTILE, attributes={"name": HOSTILE, "agent": HOSTILE}))),
    ]
    inputs = [ces_v1.SessionInput(text=HOSTILE), ces_v1.SessionInput(variables={HOSTILE: HOSTILE}),
              ces_v1.SessionInput(image=ces_v1.Image(mime_type='image/svg+xml"><script>', data=b"<svg onload=alert(4)>"))]
    return turn_from_outputs(outputs, inputs)


class _Tags(HTMLParser):
    """What a browser would actually build: tags and attributes, not text that looks like them."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_hostile_strings_come_out_inert():
    html = turn_html(hostile_turn())
    parser = _Tags()
    parser.feed(html)
    names = {t for t, _ in parser.tags}
    assert "script" not in names and "svg" not in names
    for tag, attrs in parser.tags:
        assert not any(a.startswith("on") for a in attrs), (tag, attrs)
        for a in ("href", "src"):
            assert not (attrs.get(a) or "").strip().lower().startswith("javascript:"), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,") or attrs["src"].startswith("data:image/jpeg")
    iframes = [attrs for tag, attrs in parser.tags if tag == "iframe"]
    assert iframes and all(a["sandbox"] == "" for a in iframes)
    assert "&lt;script&gt;" in html
    # the suggestion HTML only exists escaped inside the sandboxed iframe
    srcdocs = re.findall(r'<iframe class="ces-suggest" sandbox="" [^>]*srcdoc="([^"]*)"', html)
    assert srcdocs and all("<" not in s and "&lt;script&gt;" in s for s in srcdocs)
    assert "data:image/svg" not in html  # no svg thumbnails


def test_plain_text_is_readable():
    text = turn_from_outputs(full_outputs(), [ces_v1.SessionInput(text="hi")])._repr_mimebundle_()["text/plain"]
    assert text.startswith("Turn 3 (completed)") and "user:  hi" in text and "tool call select_seat (id c1)" in text
    assert "payload:" in text and "session ended" in text and "perceived latency 120.5 ms" in text


RENDER = """
import sys
from ces_nb.model import Transcript
sys.path.insert(0, "tests")
from test_model import full_outputs
from ces_nb.convert.session_output import turn_from_outputs
t = Transcript([turn_from_outputs(full_outputs()), turn_from_outputs(full_outputs())], session="s")
bundle = t._repr_mimebundle_()
sys.stdout.write(bundle["text/html"] + bundle["text/plain"] + t[0]._repr_mimebundle_()["text/html"])
"""


def test_output_is_deterministic_across_runs():
    runs = [subprocess.run([sys.executable, "-c", RENDER], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 1000
    assert 'id="ces-1"' in runs[0] and 'id="ces-2"' in runs[0]  # ids come from a counter


def test_span_tree_rows_and_bars_scale_to_the_root():
    turn = turn_from_outputs(full_outputs())
    html = span_tree_html(turn.root_span)
    assert html.count('<span class="ces-sn">') == 3
    assert '--o:0.0;--w:100.0' in html  # the root
    assert '--o:4.0;--w:40.0' in html   # LLM: 10 ms in, 100 of 250 ms
    assert "<details" in html and "<script" not in html


def test_transcript_renders_every_turn():
    t = Transcript([turn_from_outputs(full_outputs()), hostile_turn()], session="projects/p/locations/l/apps/a/sessions/s")
    bundle = t._repr_mimebundle_()
    assert bundle["text/html"].count('class="ces-turn"') == 2 and "2 turn(s)" in bundle["text/plain"]
    assert bundle["text/html"].count("<style>") == 1


def test_every_agent_text_goes_through_the_sanitizer(monkeypatch):
    """No fast path: plain paragraphs are parsed and cleaned like everything else."""
    import nh3

    from ces_nb.render import markdown as md

    seen = []
    real = nh3.clean
    monkeypatch.setattr(nh3, "clean", lambda html, **kw: seen.append(html) or real(html, **kw))
    plain = ["Flight SW12 is delayed 25 minutes. It departs from gate A13 at 18:24.", "You're in seat 2A for 340 USD.",
             'He said "hello" to me', "a\u00a0b", "a\rb", "a\0b"]
    for text in plain:
        md.markdown_html(text)
    assert len(seen) == len(plain)
    assert md.markdown_html("You're in seat 2A for 340 USD.") == "<p>You're in seat 2A for 340 USD.</p>\n"


def test_markdown_output_is_always_what_nh3_makes_of_the_parsed_text():
    import random
    import string

    import nh3

    from ces_nb.render import markdown as md

    alphabet = string.ascii_letters + string.digits + " .,;:'\"?()/@$%^-+=<>&*_`[]#!|~é日本\u00a0\u200b\t\x01\x0b\r\n\0\ufeff\U0001F600"
    rnd = random.Random(7)
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24))) for _ in range(2000)]
    texts += ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "[x](javascript:alert(3))", "a\u00a0b"]
    for text in texts:
        html = md.markdown_html(text)
        assert html == nh3.clean(md._parser().render(text), url_schemes=md.SAFE_SCHEMES,
                                 link_rel="noopener noreferrer nofollow"), repr(text)
    for text in texts[-4:-1]:
        html = md.markdown_html(text)
        assert "<script" not in html and "<img" not in html and "href=\"javascript" not in html


def test_whole_numbers_render_as_integers():
    """Struct numbers are doubles: token counts arrive as 33.0 and read 33; 1.5 stays 1.5."""
    from ces_nb.model import Span
    from ces_nb.render.html import json_tree_html, span_tree_html
    from ces_nb.render.text import integral

    root = Span("root", 0, 10_000_000, 10_000_000, children=[
        Span("LLM", 0, 5_000_000, 5_000_000, {"input token count": 33.0, "output token count": 3.0, "time to first chunk (ms)": 1.5})])
    html = span_tree_html(root)
    assert "input token count=33 output token count=3 time to first chunk (ms)=1.5" in html and "33.0" not in html
    tree = json_tree_html({"price": 210.0, "seat": "4A", "ratio": 0.25})
    assert '<span class="ces-n">210</span>' in tree and '<span class="ces-n">0.25</span>' in tree
    assert integral({"a": [1.0, 2.5, {"b": 3.0}], "c": True, "d": 1e300}) == {"a": [1, 2.5, {"b": 3}], "c": True, "d": 1e300}


def test_the_plain_text_fallback_is_hidden_without_any_css():
    """JupyterLab drops <style> from untrusted outputs; the `hidden` attribute (which its
    sanitizer keeps, given a value: sanitize-html drops empty attributes other than alt)
    still hides the fallback, and the stylesheet hides it too."""
    html = turn_html(turn_from_outputs(full_outputs()))
    assert re.search(r'<pre class="ces-fallback" hidden="hidden">', html)
    assert ".ces-root .ces-fallback { display: none; }" in html


def test_css_has_xarrays_dark_theme_selectors_and_takes_colours_from_variables():
    from ces_nb.render.html import stylesheet

    css = stylesheet()
    for selector in ('body[data-jp-theme-light="false"] .ces-root', "body.vscode-dark .ces-root", 'html[data-theme="dark"] .ces-root'):
        assert selector in css
    body = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    for declaration in re.findall(r"[{;]\s*([\w-]+)\s*:\s*([^;}]+)", body):
        name, value = declaration
        if name.startswith("--"):
            continue  # a variable's own definition (its fallback colour)
        literal = re.sub(r"var\([^()]*(\([^()]*\))?[^()]*\)", "", value)
        assert not re.search(r"#[0-9a-fA-F]{3,8}\b|rgb|hsl", literal), (name, value)
