"""The committed quickstart reads well with no kernel: nbconvert's HTML carries every turn's static view."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01-quickstart.ipynb"


class _Scripts(HTMLParser):
    """Counts <script> elements inside our turn containers (div.ces-root), tracking div depth."""

    def __init__(self):
        super().__init__()
        self.depth = 0  # >0: inside a div.ces-root
        self.scripts_in_turns = 0
        self.turns = 0

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            if self.depth:
                self.depth += 1
            elif "ces-root" in (dict(attrs).get("class") or "").split():
                self.depth, self.turns = 1, self.turns + 1
        if tag == "script" and self.depth:
            self.scripts_in_turns += 1

    def handle_endtag(self, tag):
        if tag == "div" and self.depth:
            self.depth -= 1


def test_nbconvert_html_shows_turns_without_javascript():
    html = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--stdout", str(NOTEBOOK)],
                          capture_output=True, text=True, check=True).stdout
    for piece in ('class="ces-turn"', 'class="ces-cards"', 'class="ces-spans"', "perceived latency", 'ces-section ces-tools',
                  "select_seat", 'class="ces-end"', '<iframe class="ces-suggest" sandbox=""', "Hello Ada"):
        assert piece in html, piece
    parser = _Scripts()
    parser.feed(html)
    assert parser.turns > 10 and parser.scripts_in_turns == 0
