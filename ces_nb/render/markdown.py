"""Agent text: markdown rendered with raw HTML off, then sanitized by nh3."""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape

SAFE_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    # html=False: tags the agent writes come out as text; linkify stays off (no extra deps).
    return MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


# Text with none of these can only be one plain paragraph, so the parser is skipped.
_MARKUP = re.compile(r"[\\`*_\[\]#<>!|~&]|\n|^\s*(?:[-+=]|\d+[.)])")
# ...and with none of these either, the sanitizer would give the paragraph back unchanged
# (it drops NUL, turns CR into LF and NBSP into &nbsp;), so it is skipped too. With no
# & < > in the text (they are in _MARKUP), the text is its own HTML.
_SANITIZER_CHANGES = re.compile("[\0\r\u00a0\ud800-\udfff]")


def markdown_html(text: str) -> str:
    import nh3

    if not _MARKUP.search(text):
        if not _SANITIZER_CHANGES.search(text):
            return f"<p>{text.strip()}</p>"
        return nh3.clean(f"<p>{escape(text.strip())}</p>")
    rendered = _parser().render(text)
    return nh3.clean(rendered, url_schemes=SAFE_SCHEMES, link_rel="noopener noreferrer nofollow")
