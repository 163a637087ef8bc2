"""Bearer tokens, as clients of the real CES send them.

By default any `authorization: Bearer …` header (or none) is accepted and ignored: clients such
as cxas-scrapi always attach one. With `ces-nb emulator --require-token T` only `Bearer T` is
accepted on the CES services, over gRPC and REST; every other call is UNAUTHENTICATED (HTTP 401).
gRPC health and reflection stay open, so readiness checks and grpcurl need no token."""

from __future__ import annotations

import hmac

import grpc

# Services that answer without a token: readiness and discovery.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenCheck:
    def __init__(self, token: str):
        if not token or any(c.isspace() for c in token):
            raise ValueError("--require-token takes a non-empty token without spaces, e.g. --require-token s3cret")
        self._token = token.encode()
        self.token = token

    def problem(self, authorization: str | None) -> str | None:
        """None when `authorization` (the header's value) carries the token; else what is wrong,
        never echoing what was sent."""
        if not authorization:
            return ("this emulator was started with --require-token: send the header "
                    "`authorization: Bearer <token>` (e.g. export CXAS_OAUTH_TOKEN=<token> for cxas-scrapi)")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return "the authorization header must be `Bearer <token>`; this emulator takes no other scheme"
        if not hmac.compare_digest(value.strip().encode(), self._token):
            return "the bearer token is not the one this emulator was started with (--require-token)"
        return None


def _metadata_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode("latin-1") if isinstance(v, bytes) else v
    return None


class RequireToken(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a CES call without the emulator's token."""

    def __init__(self, check: TokenCheck):
        self.check = check

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        problem = self.check.problem(_metadata_value(handler_call_details.invocation_metadata, "authorization"))
        if problem is None:
            return handler

        async def deny(_request, context: grpc.aio.ServicerContext):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
