"""gRPC failures, said the way a notebook user needs to hear them."""

from __future__ import annotations

import grpc


class CesError(RuntimeError):
    """A call to CES or the emulator failed; the message says what to do next.

    Raised `from None`, so a notebook shows the message and not the gRPC exception chain;
    the original is kept: `.grpc_error` (the google.api_core or grpc exception), `.code`
    (its grpc.StatusCode) and `.details` (the server's own words)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, *, grpc_error: BaseException | None = None,
                 details: str | None = None):
        super().__init__(message)
        self.code = code
        self.grpc_error = grpc_error
        self.details = details


def explain(exc: Exception, *, target: str = "", app: str = "") -> CesError:
    """A CesError with a next step, from a google.api_core or grpc exception (kept as `.grpc_error`).
    Raise it `from None`: the message is what a notebook should show."""
    code = _code(exc)
    detail = getattr(exc, "message", None) or (exc.details() if isinstance(exc, grpc.RpcError) and hasattr(exc, "details") else str(exc))
    where = f" at {target}" if target else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        msg = (f"CES is unreachable{where} ({detail}). Is the emulator running? Start it with `ces-nb emulator`, "
               "or call ces_nb.connect() and let it start one.")
    elif code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
        msg = (f"CES refused the credentials{where} ({detail}). Run `gcloud auth application-default login` "
               "and make sure the account can use the app's project; or use the emulator: ces_nb.connect(emulator=True).")
    elif code == grpc.StatusCode.NOT_FOUND:
        msg = f"not found{where}: {detail}. Check the app name" + (f" ({app})" if app else "") + "; client.apps() lists the apps there."
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        msg = f"CES rejected the request: {detail}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        msg = f"CES did not answer in time{where} ({detail}); the turn may still be running on the server."
    else:
        msg = f"CES call failed{where}" + (f" with {code.name}" if code else "") + f": {detail}"
    return CesError(msg, code, grpc_error=exc, details=detail)


def _code(exc: Exception) -> grpc.StatusCode | None:
    code = getattr(exc, "grpc_status_code", None)  # google.api_core.exceptions
    if code is None and isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
    return code
