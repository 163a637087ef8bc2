"""CES resource names: `projects/*/locations/*/apps/*/...`. Any project and
location are accepted; the app segment picks the loaded app."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import EmulatorError, quote

_APP = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/apps/(?P<app>[^/]+)"
_PATTERNS = {
    "app": re.compile(f"^{_APP}$"),
    "session": re.compile(f"^{_APP}/sessions/(?P<id>[^/]+)$"),
    "conversation": re.compile(f"^{_APP}/conversations/(?P<id>[^/]+)$"),
    "agent": re.compile(f"^{_APP}/agents/(?P<id>[^/]+)$"),
    "tool": re.compile(f"^{_APP}/tools/(?P<id>[^/]+)$"),
}
_EXAMPLES = {
    "app": "projects/my-project/locations/us/apps/skyway",
    "session": "projects/my-project/locations/us/apps/skyway/sessions/my-session-1",
    "conversation": "projects/my-project/locations/us/apps/skyway/conversations/my-session-1",
    "agent": "projects/my-project/locations/us/apps/skyway/agents/skyway-concierge",
    "tool": "projects/my-project/locations/us/apps/skyway/tools/get_flight_status",
}
_PARENT = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)$")
SESSION_ID = re.compile(r"^[A-Za-z0-9_.~-]{1,128}$")


@dataclass(frozen=True)
class Name:
    project: str
    location: str
    app: str
    id: str = ""

    @property
    def app_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/apps/{self.app}"

    def child(self, collection: str, ident: str) -> str:
        return f"{self.app_name}/{collection}/{ident}"


def parse(kind: str, name: str, field: str = "name") -> Name:
    m = _PATTERNS[kind].match(name or "")
    if not m:
        got = quote(name) if name else "nothing"
        raise EmulatorError.invalid_argument(f"{field} must look like {_EXAMPLES[kind]!r}; got {got}")
    parsed = Name(m["project"], m["location"], m["app"], m.groupdict().get("id") or "")
    if kind == "session" and not SESSION_ID.match(parsed.id):
        raise EmulatorError.invalid_argument(
            f"session id {quote(parsed.id)} in {field} may use only letters, digits and -._~ (at most 128)"
        )
    return parsed


def parse_parent(parent: str) -> tuple[str, str]:
    m = _PARENT.match(parent or "")
    if not m:
        raise EmulatorError.invalid_argument(
            f"parent must look like 'projects/my-project/locations/us'; got {quote(parent)}"
        )
    return m["project"], m["location"]
