"""ces_nb: explore Google CES (Gemini Enterprise for CX) agent sessions in Jupyter.

    import ces_nb
    client = ces_nb.connect()            # the embedded emulator, started if needed
    session = client.session()
    session.send("Hello")

or, in IPython: `%load_ext ces_nb`, then `%ces Hello`.

Importing registers nothing and stays light: the gRPC client, protobuf types and
renderers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "connect": ("ces_nb.client", "connect"),
    "start_emulator": ("ces_nb.local_emulator", "start_emulator"),
    "Client": ("ces_nb.client", "Client"),
    "Session": ("ces_nb.session", "Session"),
    "Turn": ("ces_nb.model", "Turn"),
    "Transcript": ("ces_nb.model", "Transcript"),
    "TranscriptError": ("ces_nb.model", "TranscriptError"),
    "Span": ("ces_nb.model", "Span"),
    "CesError": ("ces_nb.errors", "CesError"),
    "client_tool": ("ces_nb.magics", "client_tool"),
    "ToolCallForm": ("ces_nb.render.tool_form", "ToolCallForm"),
    "SpanTree": ("ces_nb.render.span_tree", "SpanTree"),
    "plot_spans": ("ces_nb.render.plots", "plot_spans"),
    "plot_latency": ("ces_nb.render.plots", "plot_latency"),
    "frames": ("ces_nb.frames", None),
    "adk": ("ces_nb.adk", None),
    "evaluate": ("ces_nb.evals.runner", "evaluate"),
    "EvalRun": ("ces_nb.evals.run", "EvalRun"),
    "evals": ("ces_nb.evals", None),
}

__all__ = [*_LAZY, "load_ipython_extension", "unload_ipython_extension"]

if TYPE_CHECKING:
    from .client import Client, connect
    from .local_emulator import start_emulator
    from .errors import CesError
    from .model import Span, Transcript, TranscriptError, Turn
    from .session import Session
    from .evals.run import EvalRun
    from .evals.runner import evaluate


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        value = value if attr is None else getattr(value, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ces_nb' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """`%load_ext ces_nb`: registers %ces / %%ces and %cescmd."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .magics import unload

    unload(ipython)
