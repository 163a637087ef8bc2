"""ToolCallForm: an ipywidgets form, generated from a client tool's schema, to answer its call.

The static tool-call table of the turn stays what nbconvert and nbval see; a live
session's view (ces_nb.session.LiveTurn) shows this panel under it. The panel holds
records and callables only (no session, no client): Send answers every pending call
of the turn at once through the callable it was given, and the agent's continuation
renders under the form.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any, Callable, Iterable

import ipywidgets as w
from IPython.display import display

from ..client_tools import run_handler
from ..errors import CesError
from ..model import ToolCall

TYPE_NAMES = ("STRING", "INTEGER", "NUMBER", "BOOLEAN", "OBJECT", "ARRAY")


def schema_type(schema: dict) -> str:
    value = schema.get("type") or schema.get("type_") or ""
    value = str(value).upper().replace("TYPE_UNSPECIFIED", "")
    return value


def infer_schema(value: Any) -> dict:
    """A schema that fits `value`, for tools that publish none."""
    if isinstance(value, bool):
        return {"type": "BOOLEAN"}
    if isinstance(value, int):
        return {"type": "INTEGER"}
    if isinstance(value, float):
        return {"type": "NUMBER"}
    if isinstance(value, str):
        return {"type": "STRING"}
    if isinstance(value, list):
        return {"type": "ARRAY", "items": infer_schema(value[0]) if value else {"type": "STRING"}}
    if isinstance(value, dict):
        return {"type": "OBJECT", "properties": {k: infer_schema(v) for k, v in value.items()}}
    return {}


class Field:
    """One editor built from a schema; `get()` returns the value or raises ValueError saying what is wrong."""

    def __init__(self, schema: dict, value: Any = None, name: str = "value", required: bool = False):
        self.schema, self.name, self.required = schema or {}, name, required
        self.kind = schema_type(self.schema)
        enum = self.schema.get("enum")
        self.children: dict[str, Field] = {}
        self.rows: list[tuple[Field, w.Widget]] = []
        tip = self.schema.get("description") or ""
        # Optional scalars are sent only when given: a spinner can't be empty, so track touch.
        self.touched = value is not None
        if enum:
            options = ([] if required else [("", None)]) + [(str(o), o) for o in enum]
            self.widget = w.Dropdown(options=options, value=value if value in enum else (None if not required else enum[0]))
            self._get: Callable[[], Any] = lambda: self.widget.value
        elif self.kind == "STRING":
            self.widget = w.Text(value="" if value is None else str(value), placeholder=tip[:60])
            self._get = lambda: self.widget.value
        elif self.kind == "INTEGER":
            self.widget = w.IntText(value=int(value) if isinstance(value, (int, float)) else 0)
            self._get = lambda: int(self.widget.value) if self.touched or self.required else None
        elif self.kind == "NUMBER":
            self.widget = w.FloatText(value=float(value) if isinstance(value, (int, float)) else 0.0)
            self._get = lambda: float(self.widget.value) if self.touched or self.required else None
        elif self.kind == "BOOLEAN":
            self.widget = w.Checkbox(value=bool(value), indent=False)
            self._get = lambda: bool(self.widget.value) if self.touched or self.required else None
        elif self.kind == "OBJECT" and self.schema.get("properties"):
            self._build_object(value if isinstance(value, dict) else {})
        elif self.kind == "ARRAY":
            self._build_array(value if isinstance(value, list) else [])
        else:  # no usable schema: JSON text
            self.widget = w.Textarea(value=json.dumps(value if value is not None else {}, indent=1), rows=3)
            self._get = lambda: _parse_json(self.widget.value, self.name)
        if self.kind in ("INTEGER", "NUMBER", "BOOLEAN") and not enum:
            self.widget.observe(self._touch, "value")
        # A stable hook for styling and browser tests: .ces-field-seat, .ces-field-flight-number …
        self.widget.add_class("ces-field-" + re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-"))

    def _touch(self, change) -> None:
        self.touched = True

    # -- composite editors ---------------------------------------------------------

    def _build_object(self, value: dict) -> None:
        required_order = list(self.schema.get("required") or [])
        required = set(required_order)
        properties = self.schema.get("properties") or {}
        # Protobuf maps lose the export's order: required fields first, as listed, then A-Z.
        keys = [k for k in required_order if k in properties] + sorted(k for k in properties if k not in required)
        lines = []
        for key in keys:
            sub = properties[key]
            child = Field(sub, value.get(key), key, key in required)
            self.children[key] = child
            label = w.HTML(f"<b>{escape(key)}</b>{' <span class=ces-required title=required>*</span>' if key in required else ''}")
            label.add_class("ces-form-label")
            line = w.HBox([label, child.widget])
            line.add_class("ces-form-line")
            lines.append(line)
        self.widget = w.VBox(lines)
        self.widget.add_class("ces-form-object")
        self._get = self._get_object

    def _get_object(self) -> dict:
        out = {}
        for key, child in self.children.items():
            v = child.get()
            if v is None or (v == "" and not child.required):
                continue
            out[key] = v
        return out

    def _build_array(self, value: list) -> None:
        self.item_schema = self.schema.get("items") or {}
        self.rows_box = w.VBox([])
        self.add_button = w.Button(description="add", icon="plus")
        self.add_button.add_class("ces-form-button")
        self.add_button.on_click(lambda _: self.add_row())
        for item in value:
            self.add_row(item)
        self.widget = w.VBox([self.rows_box, self.add_button])
        self._get = lambda: [f.get() for f, _ in self.rows]

    def add_row(self, item: Any = None) -> "Field":
        field = Field(self.item_schema, item, f"{self.name}[{len(self.rows)}]", True)
        remove = w.Button(description="remove", icon="minus")
        remove.add_class("ces-form-button")
        row = w.HBox([field.widget, remove])
        row.add_class("ces-form-line")
        self.rows.append((field, row))
        remove.on_click(lambda _, r=row: self.remove_row(r))
        self.rows_box.children = [r for _, r in self.rows]
        return field

    def remove_row(self, row: w.Widget) -> None:
        self.rows = [(f, r) for f, r in self.rows if r is not row]
        self.rows_box.children = [r for _, r in self.rows]

    # -- value -----------------------------------------------------------------------

    def get(self) -> Any:
        value = self._get()
        if self.required and (value is None or value == ""):
            raise ValueError(f"{self.name} is required")
        return value


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text or "null")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


class ToolCallForm(w.VBox):
    """One pending call: what was asked (args read-only, or edited and replayed through the
    handler), and a response editor built from the tool's response schema, with a raw-JSON tab."""

    def __repr__(self) -> str:
        return f"ToolCallForm({self.call.name}, id {self.call.id})"

    def __init__(self, call: ToolCall, schema: dict | None = None, proposed: dict | None = None,
                 handler: Callable[..., Any] | None = None, **kwargs):
        self.call, self.handler = call, handler
        schema = schema or {}
        response_schema = schema.get("response") or infer_schema(proposed if proposed is not None else call.args)
        if schema_type(response_schema) != "OBJECT":
            response_schema = {"type": "OBJECT", "properties": {"result": response_schema}} if response_schema else {}
        self.response_schema = response_schema
        # The tool's resource name only when it says more than its display name.
        tool = call.tool or ""
        tool_part = f" <code>{escape(tool)}</code>" if tool and tool.rsplit("/", 1)[-1] != call.name else ""
        head = f'<div class="ces-form-head"><b>{escape(call.name)}</b>{tool_part} <span>call <code>{escape(call.id)}</code></span></div>'
        # The args are in the turn's tool-call table just above; the form shows them only to edit them.
        self.args_text = w.Textarea(value=json.dumps(call.args, indent=1, ensure_ascii=False, sort_keys=True), disabled=True,
                                    rows=min(8, 2 + json.dumps(call.args, indent=1).count("\n")), layout=w.Layout(display="none"))
        self.args_text.add_class("ces-form-wide")
        self.edit_toggle = w.ToggleButton(description="edit args and replay", icon="pencil", value=False)
        self.replay_button = w.Button(description="replay", icon="repeat", layout=w.Layout(display="none"))
        self.edit_toggle.add_class("ces-form-button")
        self.replay_button.add_class("ces-form-button")
        self.edit_toggle.observe(self._toggle_edit, "value")
        self.replay_button.on_click(lambda _: self.replay())
        self.field = Field(response_schema, proposed or {}, "response", False)
        self.raw = w.Textarea(value=json.dumps(proposed or {}, indent=1, ensure_ascii=False), rows=6)
        self.raw.add_class("ces-form-wide")
        self.tabs = w.Tab(children=[self.field.widget, self.raw])
        self.tabs.set_title(0, "form")
        self.tabs.set_title(1, "raw JSON")
        self.error = w.HTML("")
        super().__init__([w.HTML(head), w.HBox([self.edit_toggle, self.replay_button]), self.args_text,
                          w.HTML("<b>response</b>"), self.tabs, self.error], **kwargs)
        self.add_class("ces-form-call")

    def _toggle_edit(self, change) -> None:
        self.args_text.disabled = not change["new"]
        self.args_text.layout.display = "" if change["new"] else "none"
        self.replay_button.layout.display = "" if change["new"] else "none"

    def close_for_good(self) -> None:
        """Nothing in the form can be changed or sent any more."""
        for widget in _descendants(self):
            if hasattr(widget, "disabled"):
                widget.disabled = True

    def replay(self) -> dict | None:
        """Run the tool's handler on the (edited) args and put its answer in the editor."""
        if self.handler is None:
            self.error.value = (f'<span class="ces-form-error">no handler for {escape(self.call.name)}: '
                                f"register one with @session.client_tool({escape(repr(self.call.name))})</span>")
            return None
        try:
            args = _parse_json(self.args_text.value, "args")
            result = run_handler(self.handler, args)
        except Exception as exc:
            self.error.value = f'<span class="ces-form-error">{escape(type(exc).__name__)}: {escape(str(exc))}</span>'
            return None
        result = result if isinstance(result, dict) else {"result": result}
        self.set_response(result)
        self.error.value = ""
        return result

    def set_response(self, response: dict) -> None:
        self.field = Field(self.response_schema, response, "response", False)
        self.raw.value = json.dumps(response, indent=1, ensure_ascii=False)
        self.tabs.children = [self.field.widget, self.raw]
        self.tabs.set_title(0, "form")
        self.tabs.set_title(1, "raw JSON")

    def value(self) -> dict:
        """The response to send; raises ValueError and shows it inline, keeping what was typed."""
        try:
            if self.tabs.selected_index == 1:
                value = _parse_json(self.raw.value, "response")
                if not isinstance(value, dict):
                    raise ValueError("the response must be a JSON object, e.g. {\"seat\": \"14C\"}")
            else:
                value = self.field.get()
        except ValueError as exc:
            self.error.value = f'<span class="ces-form-error">{escape(str(exc))}</span>'
            raise
        self.error.value = ""
        return value


class ToolCallPanel(w.VBox):
    """Every pending call of one turn, answered together. It holds no session: `send(responses)`
    sends {call_id: response} and returns the turn that followed, and the owner calls `sync`
    after every turn, so the panel closes once its calls are answered elsewhere."""

    def __init__(self, calls: list[ToolCall], send: Callable[[dict], Any], schemas: dict[str, dict] | None = None,
                 proposals: dict[str, dict | None] | None = None, handlers: dict[str, Callable[..., Any] | None] | None = None,
                 **kwargs):
        schemas, proposals, handlers = schemas or {}, proposals or {}, handlers or {}
        self._answer = send  # (Widget._send is taken: the comm)
        self.forms = [ToolCallForm(call, schemas.get(call.id), proposals.get(call.id), handlers.get(call.id)) for call in calls]
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.cancel_button = w.Button(description="Cancel")
        self.status = w.HTML("")
        self.output = w.Output()
        self.send_button.on_click(lambda _: self.send())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.closed = False
        super().__init__([*self.forms, w.HBox([self.send_button, self.cancel_button]), self.status, self.output], **kwargs)
        self.add_class("ces-form")

    def __repr__(self) -> str:
        names = ", ".join(f"{f.call.name} ({f.call.id})" for f in self.forms)
        return f"ToolCallPanel({len(self.forms)} pending call(s): {names}; fill the form and press Send)"

    def send(self):
        """Send every form's response; the turn that followed, or None (a field to fix, an error, closed)."""
        if self.closed:
            return None
        responses: dict[str, dict] = {}
        failed = False
        for form in self.forms:
            try:
                responses[form.call.id] = form.value()
            except ValueError:
                failed = True
        if failed:
            self.status.value = "fix the fields marked above, then Send again"
            return None
        self._busy(True)
        try:
            continuation = self._answer(responses)
        except CesError as exc:
            self.status.value = f'<span class="ces-form-error">{escape(str(exc))}</span>'
            self._busy(False)
            return None
        self.status.value = f"sent {len(responses)} response(s)"
        self.close_for_good()
        with self.output:
            display(continuation)
        return continuation

    def cancel(self) -> None:
        self._busy(True)
        self.send_button.disabled = True
        ids = ", ".join(f.call.id for f in self.forms)
        self.status.value = f"cancelled: the session still waits for {escape(ids)}; <code>%cescmd tools pending</code> lists them"

    def _busy(self, done: bool) -> None:
        self.send_button.disabled = done
        self.cancel_button.disabled = done

    def sync(self, pending: Iterable[str], ended: bool, answered_how: dict[str, str | None]) -> None:
        """After every turn of the session: once none of this panel's calls is `pending` (answered
        from Python, by a handler, a mock or another form) or the session `ended`, the form is
        disabled and says why, so it can't send a stale answer. `answered_how`: call id -> how."""
        if self.closed:
            return
        if ended:
            self.status.value = ("the session ended, so these calls can't be answered any more; "
                                 "start another with <code>%cescmd new</code> or <code>client.session()</code>")
        else:
            pending = set(pending)
            if any(f.call.id in pending for f in self.forms):
                return
            hows = []
            for f in self.forms:
                how = answered_how.get(f.call.id) or "another route"
                if how not in hows:
                    hows.append(how)
            self.status.value = f"already answered (by {escape(', '.join(hows))}); nothing left to send here"
        self.close_for_good()

    def close_for_good(self) -> None:
        self.closed = True
        self._busy(True)
        for form in self.forms:
            form.close_for_good()


def _descendants(widget: w.Widget):
    stack = [widget]
    while stack:
        item = stack.pop()
        yield item
        stack.extend(getattr(item, "children", ()) or ())
