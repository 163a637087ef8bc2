"""CES resource names, through the generated `*_path` / `parse_*_path` helpers of the official
clients (imported on first use: google.cloud.ces_v1 is heavy)."""

from __future__ import annotations

EMULATOR_PARENT = "projects/ces-nb/locations/us"  # AgentServiceClient.common_location_path("ces-nb", "us")


def agent_service_client():
    from google.cloud.ces_v1 import AgentServiceClient

    return AgentServiceClient


def _one_segment_each(parts: dict[str, str]) -> dict[str, str]:
    # The generated patterns match lazily up to the end, so "apps/a/sessions/s" would parse as app "a/sessions/s".
    return parts if parts and all(v and "/" not in v for v in parts.values()) else {}


def parse_app(name: str) -> dict[str, str]:
    """{"project", "location", "app"} of an app resource name, or {} when it is not one."""
    return _one_segment_each(agent_service_client().parse_app_path(name or ""))


def parse_conversation(name: str) -> dict[str, str]:
    """{"project", "location", "app", "conversation"} of a conversation name, or {}."""
    return _one_segment_each(agent_service_client().parse_conversation_path(name or ""))


def app_parent(app: str) -> str:
    """The location an app lives in: projects/P/locations/L."""
    parts = parse_app(app)
    return agent_service_client().common_location_path(parts["project"], parts["location"]) if parts else EMULATOR_PARENT


def session_path(app: str, session_id: str) -> str:
    from google.cloud.ces_v1 import SessionServiceClient

    parts = parse_app(app)
    return SessionServiceClient.session_path(**parts, session=session_id) if parts else f"{app}/sessions/{session_id}"
