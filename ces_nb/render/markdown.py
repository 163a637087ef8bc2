"""Agent text: markdown rendered with raw HTML off, then sanitized by nh3."""

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

    rendered = _parser().render(text)
    return nh3.clean(rendered, url_schemes=SAFE_SCHEMES, link_rel="noopener noreferrer nofollow")
