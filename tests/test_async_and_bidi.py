"""The async client, and BidiRunSession held open across turns."""

from __future__ import annotations

import asyncio
import queue
import threading

import grpc
from google.api_core import exceptions
from google.cloud import ces_v1
from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcAsyncIOTransport

from conftest import APP, EmulatorProcess, kind


def test_async_client_runs_and_streams(emulator, session_name):
    async def main():
        channel = grpc.aio.insecure_channel(emulator.address)
        client = ces_v1.SessionServiceAsyncClient(transport=SessionServiceGrpcAsyncIOTransport(channel=channel))
        name = session_name()
        response = await client.run_session(request=ces_v1.RunSessionRequest(
            config=ces_v1.SessionConfig(session=name), inputs=[ces_v1.SessionInput(text="Hello")]))
        stream = await client.stream_run_session(request=ces_v1.RunSessionRequest(
            config=ces_v1.SessionConfig(session=name, enable_text_streaming=True),
            inputs=[ces_v1.SessionInput(text="How many bags can I check?")]))
        streamed = [o async for r in stream for o in r.outputs]
        await channel.close()
        return response.outputs, streamed

    first, streamed = asyncio.run(main())
    assert "welcome" in first[0].text and first[-1].turn_completed
    assert {o.turn_index for o in streamed} == {2}
    assert sum(kind(o) == "text" for o in streamed) > 1 and kind(streamed[-1]) == "citations"


class Bidi:
    """A bidi stream driven from the test: put messages in, read replies out. Use it in a `with`
    block: leaving it half-closes the stream, so gRPC's request thread never stays blocked."""

    def __init__(self, sessions):
        self.outbox: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.closed = False

        def requests():
            while (message := self.outbox.get()) is not None:
                yield message

        def pump():
            try:
                for reply in sessions.bidi_run_session(requests=requests()):
                    self.replies.put(reply)
            except Exception as exc:
                self.replies.put(exc)
            self.replies.put(None)

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()

    def __enter__(self) -> "Bidi":
        return self

    def __exit__(self, *exc) -> None:
        if not self.closed:
            self.outbox.put(None)
            self.closed = True
        self.pump.join(30)
        assert not self.pump.is_alive(), "the bidi stream did not end after half-close"

    def send(self, **message) -> None:
        self.outbox.put(ces_v1.BidiSessionClientMessage(**message))

    def turn(self) -> list:
        """Replies up to and including the one that completes the turn."""
        got = []
        while True:
            reply = self.replies.get(timeout=30)
            if reply is None or isinstance(reply, Exception):
                got.append(reply)
                return got
            got.append(reply)
            if reply.session_output.turn_completed:
                return got

    def close(self) -> list:
        self.outbox.put(None)
        self.closed = True
        rest = []
        while (reply := self.replies.get(timeout=30)) is not None:
            rest.append(reply)
        return rest


def test_bidi_session_across_turns_until_end_session(sessions, session_name):
    with Bidi(sessions) as bidi:
        bidi.send(config=ces_v1.SessionConfig(session=session_name()))
        bidi.send(realtime_input=ces_v1.SessionInput(text="Hello"))
        first = bidi.turn()
        assert "welcome" in first[0].session_output.text and first[-1].session_output.turn_index == 1
        bidi.send(realtime_input=ces_v1.SessionInput(text="What's the status of flight SW77?"))
        second = bidi.turn()
        assert "Flight SW77" in second[0].session_output.text and second[-1].session_output.turn_index == 2
        bidi.send(realtime_input=ces_v1.SessionInput(text="That's all, thanks. Goodbye!"))
        third = bidi.turn()
        rest = bidi.close()  # half-close ends the stream cleanly: no error arrives
    messages = third + rest
    kinds = [ces_v1.BidiSessionServerMessage.pb(m).WhichOneof("message_type") for m in messages]
    assert "end_session" in kinds
    assert not any(isinstance(m, Exception) for m in messages)


def test_bidi_without_config_first_is_invalid_argument(sessions):
    with Bidi(sessions) as bidi:
        bidi.send(realtime_input=ces_v1.SessionInput(text="Hello"))
        replies = bidi.turn()
    error = replies[-2] if replies[-1] is None else replies[-1]
    assert isinstance(error, exceptions.InvalidArgument)
    assert "first BidiRunSession message must carry config" in error.message


def test_bidi_unknown_app_is_not_found(sessions):
    with Bidi(sessions) as bidi:
        bidi.send(config=ces_v1.SessionConfig(session="projects/p/locations/l/apps/ghost/sessions/x"))
        replies = bidi.turn()
    assert any(isinstance(r, exceptions.NotFound) for r in replies)


def test_shutdown_sends_go_away_to_open_streams(tmp_path):
    process = EmulatorProcess("--db", ":memory:")
    channel = grpc.insecure_channel(process.address)
    try:
        from google.cloud.ces_v1.services.session_service.transports import SessionServiceGrpcTransport

        client = ces_v1.SessionServiceClient(transport=SessionServiceGrpcTransport(channel=channel))
        with Bidi(client) as bidi:
            bidi.send(config=ces_v1.SessionConfig(session=f"{APP}/sessions/goaway"))
            bidi.send(realtime_input=ces_v1.SessionInput(text="Hello"))
            assert bidi.turn()[-1].session_output.turn_completed
            assert process.stop() == 0  # SIGTERM: clean exit
            replies = []
            while (reply := bidi.replies.get(timeout=30)) is not None:
                replies.append(reply)
        assert any(not isinstance(r, Exception) and "go_away" in r for r in replies)
    finally:
        channel.close()
