"""Worker process for pythonFunction tools: one JSON request per line on stdin,
one JSON reply per line on stdout. Started and killed by python_runner."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback


def _serve() -> None:
    protocol_out = sys.stdout
    compiled: dict[str, object] = {}
    for line in sys.stdin:
        request = json.loads(line)
        reply: dict = {"id": request["id"]}
        try:
            code = request["code"]
            if code not in compiled:
                compiled[code] = compile(code, f"<tool {request['function']}>", "exec")
            namespace: dict = {"__name__": "ces_tool"}
            # Tool code may print; keep its output off the protocol stream.
            with contextlib.redirect_stdout(sys.stderr):
                exec(compiled[code], namespace)  # noqa: S102 - the app's own tool code
                fn = namespace.get(request["function"])
                if not callable(fn):
                    raise NameError(f"the tool code defines no function named {request['function']!r}")
                result = fn(**request.get("args", {}))
            reply["result"] = result
        except Exception as exc:  # a tool's failure is reported, never fatal
            tb = traceback.extract_tb(exc.__traceback__)
            where = next((f"line {f.lineno}" for f in reversed(tb) if f.filename.startswith("<tool")), "")
            reply["error"] = f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else "")
        protocol_out.write(json.dumps(reply, default=str) + "\n")
        protocol_out.flush()


if __name__ == "__main__":
    _serve()
