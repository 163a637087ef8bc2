"""gRPC handlers for the CES services, built on the official proto-plus types."""

from __future__ import annotations

import functools
import logging

import grpc

from ..errors import EmulatorError

log = logging.getLogger("ces_nb.emulator")


def unary(method, request_type, response_type):
    """An aio unary handler that turns EmulatorError into its status, and bugs into INTERNAL."""

    @functools.wraps(method)
    async def handler(request, context: grpc.aio.ServicerContext):
        try:
            return await method(request, context)
        except EmulatorError as exc:
            await context.abort(exc.code, exc.message)
        except Exception as exc:  # never crash the server; say what failed
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"the emulator failed in {method.__name__}: {exc!r}")

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_type.deserialize, response_serializer=response_type.serialize
    )


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext, where: str) -> None:
    if isinstance(exc, EmulatorError):
        await context.abort(exc.code, exc.message)
    log.error("%s failed", where, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"the emulator failed in {where}: {exc!r}")
