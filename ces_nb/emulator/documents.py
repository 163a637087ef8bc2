"""Offline search over an app's own documents: SQLite FTS5 ranked by bm25.

Stands in for the Vertex AI Search data store behind a dataStoreTool (and,
offline, for the web behind a googleSearchTool).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass

from .export import Document

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class SearchHit:
    title: str
    uri: str
    snippet: str
    score: float


def _body(text: str) -> str:
    """The text without Markdown heading lines: titles are indexed on their own."""
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")).strip()


class DocumentIndex:
    """An in-memory FTS5 index; built once per tool when the app loads."""

    def __init__(self, documents: list[Document]):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE docs USING fts5(title, uri UNINDEXED, body, tokenize='porter')")
        self._db.executemany(
            "INSERT INTO docs(title, uri, body) VALUES (?, ?, ?)",
            [(d.title, d.uri, _body(d.text)) for d in documents],
        )
        self.size = len(documents)

    def search(self, query: str, limit: int = 3) -> list[SearchHit]:
        words = _WORD.findall(query.lower())
        if not words:
            return []
        # OR of quoted terms: any word may match, bm25 ranks; quoting keeps
        # user text from being read as FTS5 query syntax.
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        with self._lock:
            rows = self._db.execute(
                "SELECT title, uri, snippet(docs, 2, '', '', ' … ', 24), bm25(docs) "
                "FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?",
                (match, limit),
            ).fetchall()
        return [SearchHit(title=t, uri=u, snippet=s.strip(), score=-b) for t, u, s, b in rows]
