"""`ces_nb.adk`: ADK sessions, artifacts, memory and spans in ces_nb's views (see explore/adk.py)."""

from .explore.adk import (  # noqa: F401
    ArtifactsView,
    MemoryView,
    artifacts,
    memory_search,
    sessions,
    spans_from_otel,
    state_timeline,
    transcript,
)

__all__ = ["transcript", "sessions", "state_timeline", "artifacts", "memory_search", "spans_from_otel",
           "ArtifactsView", "MemoryView"]
