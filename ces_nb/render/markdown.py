"""Agent text: markdown rendered with raw HTML off, then sanitized by nh3.

Every text goes through both, plain paragraphs included: a shortcut that skips the
sanitizer for "obviously plain" text is a bypass waiting for the case its regex missed.
"""

from __future__ import annotations

from functools import lru_cache

SAFE_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    # html=False: tags the agent writes come out as text; linkify stays off (no extra deps).
    return MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


def markdown_html(text: str) -> str:
    import nh3

    return nh3.clean(_parser().render(text), url_schemes=SAFE_SCHEMES, link_rel="noopener noreferrer nofollow")
