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


def markdown_html(text: str) -> str:
    import nh3

    if not _MARKUP.search(text):
        return nh3.clean(f"<p>{escape(text.strip())}</p>")
    rendered = _parser().render(text)
    return nh3.clean(rendered, url_schemes=SAFE_SCHEMES, link_rel="noopener noreferrer nofollow")
