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

from ces_nb.model import Transcript, Turn
from ces_nb.render.html import span_tree_html, turn_html
from test_model import full_outputs

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'
JS_URI = "javascript:alert(3)"


def test_every_output_kind_appears_in_html():
    inputs = [ces_v1.SessionInput(text="Hi there"), ces_v1.SessionInput(dtmf="12#"), ces_v1.SessionInput(event=ces_v1.Event(event="welcome")),
              ces_v1.SessionInput(variables={"customer_name": "Ada"}),
              ces_v1.SessionInput(image=ces_v1.Image(mime_type="image/png", data=b"\x89PNG\r\n\x1a\nabc"))]
    html = turn_html(Turn.from_outputs(full_outputs(), inputs))
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
    html = html.split('<pre class="ces-fallback">', 1)[1].split("</pre>", 1)[1]
    order = [html.index(s) for s in ("Hi there", "<strong>there</strong>", "<audio", "ces-tools", "ces-cards", "ces-suggest",
                                     "boarding_pass", "session ended", "ces-spans")]
    assert order == sorted(order)


def test_audio_player_holds_a_real_wav():
    pcm = (b"\x00\x10" * 800)
    turn = Turn.from_outputs([ces_v1.SessionOutput(audio=pcm, turn_index=1)])
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
    return Turn.from_outputs(outputs, inputs)


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
    text = Turn.from_outputs(full_outputs(), [ces_v1.SessionInput(text="hi")])._repr_mimebundle_()["text/plain"]
    assert text.startswith("Turn 3 (completed)") and "user:  hi" in text and "tool call select_seat (id c1)" in text
    assert "payload:" in text and "session ended" in text and "perceived latency 120.5 ms" in text


RENDER = """
import sys
from ces_nb.model import Transcript
sys.path.insert(0, "tests")
from test_model import full_outputs
from ces_nb.model import Turn
t = Transcript([Turn.from_outputs(full_outputs()), Turn.from_outputs(full_outputs())], session="s")
bundle = t._repr_mimebundle_()
sys.stdout.write(bundle["text/html"] + bundle["text/plain"] + t[0]._repr_mimebundle_()["text/html"])
"""


def test_output_is_deterministic_across_runs():
    runs = [subprocess.run([sys.executable, "-c", RENDER], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 1000
    assert 'id="ces-1"' in runs[0] and 'id="ces-2"' in runs[0]  # ids come from a counter


def test_span_tree_rows_and_bars_scale_to_the_root():
    turn = Turn.from_outputs(full_outputs())
    html = span_tree_html(turn.root_span)
    assert html.count('<span class="ces-sn">') == 3
    assert '--o:0.0;--w:100.0' in html  # the root
    assert '--o:4.0;--w:40.0' in html   # LLM: 10 ms in, 100 of 250 ms
    assert "<details" in html and "<script" not in html


def test_transcript_renders_every_turn():
    t = Transcript([Turn.from_outputs(full_outputs()), hostile_turn()], session="projects/p/locations/l/apps/a/sessions/s")
    bundle = t._repr_mimebundle_()
    assert bundle["text/html"].count('class="ces-turn"') == 2 and "2 turn(s)" in bundle["text/plain"]
    assert bundle["text/html"].count("<style>") == 1


def test_plain_paragraph_shortcut_matches_markdown():
    import nh3

    from ces_nb.render import markdown as md

    plain = ["Flight SW12 is delayed 25 minutes. It departs from gate A13 at 18:24.",
             "You're in seat 2A for 340 USD. Shall I charge it?", 'He said "hello" to me', "Source: Checked and carry-on baggage."]
    for text in plain:
        assert md._MARKUP.search(text) is None
        assert md.markdown_html(text).strip() == nh3.clean(md._parser().render(text), url_schemes=md.SAFE_SCHEMES).strip()
    # anything that could be markup goes through the parser
    for text in ["**bold**", "1. first", "- item", "a\nb", "[x](https://e.example)", "<b>x</b>", "a & b", "# title"]:
        assert md._MARKUP.search(text) is not None


def test_plain_paragraph_skips_the_sanitizer_only_where_it_would_change_nothing():
    import random
    import string
    from html import escape

    import nh3

    from ces_nb.render import markdown as md

    alphabet = string.ascii_letters + string.digits + " .,;:'\"?()/@$%^-+=é日本\u00a0\u200b\t\x01\x0b\r\0\ufeff\U0001F600"
    rnd = random.Random(7)
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24))) for _ in range(3000)]
    texts += ["a\u00a0b", "a\rb", "a\0b", "  it's \"quoted\"  "]
    checked = 0
    for text in texts:
        if md._MARKUP.search(text):
            continue
        checked += 1
        assert md.markdown_html(text) == nh3.clean(f"<p>{escape(text.strip())}</p>"), repr(text)
    assert checked > 2000
