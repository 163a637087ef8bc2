"""gRPC handlers for the CES services, built on the official proto-plus types."""

from __future__ import annotations

import functools
import logging

import grpc

from ..errors import EmulatorError, clip
from ..input_limits import early_refusal

log = logging.getLogger("ces_nb.emulator")


class Undecodable:
    """A request whose bytes did not parse. The deserializer hands this on, so the handler can
    answer INVALID_ARGUMENT saying why; gRPC itself would answer a bare UNKNOWN/INTERNAL."""

    def __init__(self, type_name: str, error: Exception):
        self.error = EmulatorError.invalid_argument(
            f"the request is not a valid {type_name} ({clip(str(error), 200)}): strings must be UTF-8 "
            f"and messages may nest at most 100 deep; build it with the google-cloud-ces types"
        )


class Refused(Undecodable):
    """A request refused from its bytes alone (an input past its limit: input_limits.py), unparsed."""

    def __init__(self, error: EmulatorError):
        self.error = error


def decoder(request_type):
    """A request deserializer that never raises: bad bytes become an Undecodable, an oversized
    input a Refused, both answered by the handler."""
    name = request_type.pb().DESCRIPTOR.full_name

    def decode(data: bytes):
        refusal = early_refusal(request_type, data)
        if refusal is not None:
            return Refused(refusal)
        try:
            return request_type.deserialize(data)
        except Exception as exc:  # DecodeError, RecursionError, UnicodeDecodeError...
            return Undecodable(name, exc)

    return decode


def check_decoded(request) -> None:
    if isinstance(request, Undecodable):
        raise request.error


def unary(method, request_type, response_type):
    """An aio unary handler that turns EmulatorError into its status, and bugs into INTERNAL."""

    @functools.wraps(method)
    async def handler(request, context: grpc.aio.ServicerContext):
        try:
            check_decoded(request)
            return await method(request, context)
        except EmulatorError as exc:
            await context.abort(exc.code, exc.message)
        except Exception as exc:  # never crash the server; say what failed
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"the emulator failed in {method.__name__}: {clip(repr(exc), 300)}")

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=decoder(request_type), response_serializer=response_type.serialize
    )


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext, where: str) -> None:
    if isinstance(exc, EmulatorError):
        await context.abort(exc.code, exc.message)
    log.error("%s failed", where, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"the emulator failed in {where}: {clip(repr(exc), 300)}")
