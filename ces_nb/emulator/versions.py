"""Every CES API version on the same handlers.

The services' handlers are registered under `google.cloud.ces.v1`. `AlsoServedAs` answers the
same methods under the other versions (`google.cloud.ces.v1beta`, which clients such as
cxas-scrapi call) by handing the call to the v1 handler: the request and response messages of
the two versions are the same field for field, so the bytes need no conversion."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import grpc

from .reflection import API_VERSIONS, PACKAGE


class _CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple


class AlsoServedAs(grpc.GenericRpcHandler):
    """Looks `/google.cloud.ces.v1beta.X/M` up as `/google.cloud.ces.v1.X/M` in `handlers`."""

    def __init__(self, handlers: Sequence[grpc.GenericRpcHandler], packages: Sequence[str] = tuple(p for p in API_VERSIONS if p != PACKAGE)):
        self.handlers = tuple(handlers)
        self.prefixes = tuple(f"/{p}." for p in packages)

    def service(self, handler_call_details):
        method = handler_call_details.method
        for prefix in self.prefixes:
            if method.startswith(prefix):
                as_v1 = _CallDetails(f"/{PACKAGE}.{method[len(prefix):]}", handler_call_details.invocation_metadata)
                for handler in self.handlers:
                    found = handler.service(as_v1)
                    if found is not None:
                        return found
                return None
        return None


class Unserved(grpc.GenericRpcHandler):
    """UNIMPLEMENTED, naming the method and what is served, for any CES method the emulator
    lacks (CreateApp, evaluation datasets, ...), where gRPC would say only "Method not found!"."""

    def service(self, handler_call_details):
        method = handler_call_details.method
        if not method.startswith("/google.cloud.ces."):
            return None
        name = method.strip("/").replace("/", ".")
        message = (f"{name} is not served by the ces-nb emulator; it serves the SessionService, the read side of the "
                   f"AgentService (apps, agents, tools, toolsets, guardrails, examples, conversations) and "
                   f"ToolService.ExecuteTool, under google.cloud.ces.v1 and v1beta, and the EvaluationService's "
                   f"evaluations, expectations, runs and results under v1beta (the only version that defines it)")

        async def unimplemented(_requests, context: grpc.aio.ServicerContext):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        # Streaming both ways fits a call of any kind: it aborts before reading a message.
        return grpc.stream_stream_rpc_method_handler(unimplemented)
