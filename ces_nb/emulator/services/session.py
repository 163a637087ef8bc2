"""google.cloud.ces.v1.SessionService: RunSession, StreamRunSession, BidiRunSession."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.cloud import ces_v1

from .. import names
from ..errors import EmulatorError
from ..registry import AppRegistry
from . import abort_for, unary

SERVICE = "google.cloud.ces.v1.SessionService"


class SessionService:
    def __init__(self, registry: AppRegistry):
        self.registry = registry
        self._bidi_streams: set[asyncio.Queue] = set()

    def _target(self, config: ces_v1.SessionConfig):
        name = names.parse("session", config.session, "config.session")
        return self.registry.runtime(name), name

    async def run_session(self, request: ces_v1.RunSessionRequest, context) -> ces_v1.RunSessionResponse:
        started = time.time_ns()
        runtime, name = self._target(request.config)
        outputs = await runtime.run_turn_to_end(name.id, request.config, list(request.inputs), turn_started_ns=started)
        return ces_v1.RunSessionResponse(outputs=outputs)

    async def stream_run_session(self, request: ces_v1.RunSessionRequest, context):
        started = time.time_ns()
        try:
            runtime, name = self._target(request.config)
            async for output in runtime.run_turn(
                name.id, request.config, list(request.inputs), stream_text=request.config.enable_text_streaming, turn_started_ns=started
            ):
                yield ces_v1.RunSessionResponse(outputs=[output])
        except Exception as exc:
            await abort_for(exc, context, "StreamRunSession")

    async def bidi_run_session(self, request_iterator, context):
        """The first message carries config; then realtime_input, one turn each."""
        inbox: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await inbox.put(message)
            except Exception as exc:  # the client went away mid-stream
                await inbox.put(exc)
            await inbox.put(None)

        reader = asyncio.create_task(read())
        self._bidi_streams.add(inbox)
        try:
            first = await inbox.get()
            if first is None or isinstance(first, Exception):
                return
            if ces_v1.BidiSessionClientMessage.pb(first).WhichOneof("message_type") != "config":
                raise EmulatorError.invalid_argument(
                    "the first BidiRunSession message must carry config (SessionConfig with session="
                    "'projects/p/locations/l/apps/APP/sessions/ID'); send realtime_input after it"
                )
            config = first.config
            runtime, name = self._target(config)
            while True:
                message = await inbox.get()
                if message is None or isinstance(message, Exception):
                    return  # half-close: the client is done
                if message == "go_away":
                    yield ces_v1.BidiSessionServerMessage(go_away=ces_v1.GoAway())
                    return
                if ces_v1.BidiSessionClientMessage.pb(message).WhichOneof("message_type") != "realtime_input":
                    raise EmulatorError.invalid_argument("config may only be sent once, in the first message; send realtime_input")
                started = time.time_ns()
                async for output in runtime.run_turn(name.id, config, [message.realtime_input], turn_started_ns=started):
                    yield ces_v1.BidiSessionServerMessage(session_output=output)
                    if "end_session" in output:
                        yield ces_v1.BidiSessionServerMessage(end_session=output.end_session)
        except Exception as exc:
            await abort_for(exc, context, "BidiRunSession")
        finally:
            self._bidi_streams.discard(inbox)
            reader.cancel()

    async def go_away(self) -> None:
        """Tell every open bidi stream to reconnect elsewhere (before shutdown)."""
        for inbox in list(self._bidi_streams):
            await inbox.put("go_away")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "RunSession": unary(self.run_session, ces_v1.RunSessionRequest, ces_v1.RunSessionResponse),
                "StreamRunSession": grpc.unary_stream_rpc_method_handler(
                    self.stream_run_session,
                    request_deserializer=ces_v1.RunSessionRequest.deserialize,
                    response_serializer=ces_v1.RunSessionResponse.serialize,
                ),
                "BidiRunSession": grpc.stream_stream_rpc_method_handler(
                    self.bidi_run_session,
                    request_deserializer=ces_v1.BidiSessionClientMessage.deserialize,
                    response_serializer=ces_v1.BidiSessionServerMessage.serialize,
                ),
            },
        )
