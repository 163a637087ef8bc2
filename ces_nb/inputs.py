"""Python values -> SessionInput protos (text, dtmf, event, variables, image, blob, tool responses)."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any, Iterable, Mapping

from .model import ToolCall, ToolResponse

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def media(value: Any, *, kind: str, mime_type: str | None = None) -> tuple[str, bytes]:
    """A path, bytes, or (mime_type, bytes) -> (mime_type, bytes)."""
    if isinstance(value, tuple) and len(value) == 2:
        return value[0], bytes(value[1])
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return mime_type or _sniff(data, kind), data
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}; pass a path that exists, or the bytes themselves")
    guessed = mimetypes.guess_type(path.name)[0]
    data = path.read_bytes()
    return mime_type or guessed or _sniff(data, kind), data


def _sniff(data: bytes, kind: str) -> str:
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png" if kind == "image" else "application/octet-stream"


def tool_responses_list(responses: Any, pending: Mapping[str, ToolCall] | None = None) -> list[ToolResponse]:
    """{call_id: response} or an iterable of ToolResponse / dicts -> ToolResponses,
    naming the tool from the pending call when the caller did not."""
    pending = pending or {}
    items: Iterable[Any]
    if isinstance(responses, Mapping):
        items = [ToolResponse(id=i, tool="", response=r) for i, r in responses.items()]
    else:
        items = responses
    out: list[ToolResponse] = []
    for item in items:
        response = item if isinstance(item, ToolResponse) else ToolResponse.from_dict(dict(item))
        call = pending.get(response.id)
        if call is not None:
            response.tool = response.tool or call.tool
            response.display_name = response.display_name or call.display_name
        if not isinstance(response.response, dict):
            response.response = {"result": response.response}
        out.append(response)
    return out


def build_inputs(
    text: str | None = None,
    *,
    dtmf: str | None = None,
    event: str | None = None,
    variables: Mapping[str, Any] | None = None,
    image: Any = None,
    blob: Any = None,
    tool_responses: Any = None,
    audio: bytes | None = None,
    pending: Mapping[str, ToolCall] | None = None,
) -> list:
    """The SessionInputs for one turn, variables first so the agent sees them this turn."""
    from google.cloud import ces_v1

    inputs: list = []
    if variables:
        inputs.append(ces_v1.SessionInput(variables=dict(variables)))
    if text is not None and text != "":
        inputs.append(ces_v1.SessionInput(text=str(text)))
    if dtmf:
        inputs.append(ces_v1.SessionInput(dtmf=str(dtmf)))
    if event:
        inputs.append(ces_v1.SessionInput(event=ces_v1.Event(event=str(event))))
    if image is not None:
        mime, data = media(image, kind="image")
        inputs.append(ces_v1.SessionInput(image=ces_v1.Image(mime_type=mime, data=data)))
    if blob is not None:
        mime, data = media(blob, kind="blob")
        inputs.append(ces_v1.SessionInput(blob=ces_v1.Blob(mime_type=mime, data=data)))
    if audio is not None:
        inputs.append(ces_v1.SessionInput(audio=bytes(audio)))
    if tool_responses:
        responses = []
        for r in tool_responses_list(tool_responses, pending):
            msg = ces_v1.ToolResponse(id=r.id, display_name=r.display_name, response=r.response)
            if r.tool:
                msg.tool = r.tool
            responses.append(msg)
        inputs.append(ces_v1.SessionInput(tool_responses=ces_v1.ToolResponses(tool_responses=responses)))
    if not inputs:
        raise ValueError("nothing to send: give text, or one of dtmf=, event=, variables=, image=, blob=, tool_responses=")
    return inputs
