"""session.live(): BidiRunSession voice from the notebook client, and the voice magics."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import soundfile
from IPython.core.error import UsageError

import ces_nb
from ces_nb.errors import CesError
from ces_nb.live import _Outbox
from ces_nb import audio
from ces_nb.emulator.asr import normalize
from ces_nb.tts import synthesize

from conftest import APP
from emulator_process import EmulatorProcess, free_port


@pytest.fixture(scope="module")
def voice_server():
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "0")
    yield server
    server.stop()


@pytest.fixture
def client(voice_server):
    c = ces_nb.connect(APP, endpoint=voice_server.address)
    yield c
    c.close()


def test_live_session_speaks_and_renders_players_transcript_and_timeline(client, tmp_path):
    speech = synthesize(normalize("What is my loyalty tier?"))
    wav = tmp_path / "q.wav"
    soundfile.write(wav, speech.samples, speech.sample_rate)
    session = client.session()
    with session.live({"audio_encoding": "MULAW", "sample_rate_hertz": 8000}, ("LINEAR16", 16000)) as live:
        live.send_audio(str(wav), realtime=False)
        turn = live.next_turn()
        live.send_text("How many bags can I check?")
        second = live.next_turn()
    assert turn.heard == "what is my loyalty tier" and "Blue member" in turn.text
    assert turn.inputs[0].kind == "audio" and turn.inputs[0].value[:4] == b"RIFF"
    samples = audio.decode(turn.audio, "LINEAR16", 16000)
    assert len(samples) / 16000 > 1.0 and audio.rms(samples) > 300
    assert session.turns == [turn, second] and "23 kg" in second.text
    html = turn._repr_mimebundle_()["text/html"]
    assert html.count("<audio") == 2 and "heard" in html and "timeline" in html
    plain = turn._repr_mimebundle_()["text/plain"]
    assert "heard: what is my loyalty tier" in plain and ("[audio 1." in plain or "[audio 2." in plain)


def test_barge_in_is_marked_where_it_happened():
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "1")
    try:
        client = ces_nb.connect(APP, endpoint=server.address)
        session = client.session()
        greeting, question = synthesize("hello hi there"), synthesize("what is my loyalty tier")
        import time

        with session.live() as live:
            live.send_audio((greeting.samples, greeting.sample_rate), realtime=False)
            time.sleep(2.0)
            live.send_audio((question.samples, question.sample_rate), realtime=False)
            cut, answer = live.next_turn(), live.next_turn()
        assert cut.interrupted and 0 < cut.interrupted_at_ms < 5000
        assert f"{cut.interrupted_at_ms / 1000:.1f} s into its reply" in cut._repr_mimebundle_()["text/html"]
        assert answer.heard == "what is my loyalty tier"
        client.close()
    finally:
        server.stop()


def test_say_and_send_audio_shortcuts(client):
    session = client.session()
    turn = session.say("That's all, thanks. Goodbye!")
    assert turn.ended and turn.heard == "that's all thanks goodbye"
    with pytest.raises(ValueError, match="chunk_ms"):
        session.live(chunk_ms=500)
    with pytest.raises(ValueError, match="sample_rate_hertz"):
        session.live({"sample_rate_hertz": 11025})


def test_go_away_reconnects_with_history_and_loses_no_turn():
    port = free_port()

    def start() -> EmulatorProcess:
        return EmulatorProcess("--db", ":memory:", "--audio-pace", "0", port=port)

    server = start()
    client = ces_nb.connect(APP, endpoint=f"127.0.0.1:{port}")
    session = client.session()
    live = session.live()
    live.open()
    try:
        live.send_text("Hello")
        assert "traveler" in live.next_turn().text
        assert server.stop() == 0  # SIGTERM: the emulator says go_away to open streams, then exits
        server = start()   # a new server at the same address
        live.send_text("What is my loyalty tier?")
        turn = live.next_turn(timeout=60)
        assert "Blue member" in turn.text and live.reconnects == 1
        assert [t.user_text for t in session.turns] == ["Hello", "What is my loyalty tier?"]
    finally:
        live.close(5)
        server.stop()
        client.close()


def test_after_go_away_the_reconnect_knocks_until_its_deadline_then_says_why(monkeypatch):
    """The knock loop is google.api_core.retry: it backs off while nothing listens, and once its
    deadline passes the last refusal (UNAVAILABLE), not a RetryError, is what the user reads."""
    import ces_nb.live

    monkeypatch.setattr(ces_nb.live, "RECONNECT_SECONDS", 3.0)
    port = free_port()
    server = EmulatorProcess("--db", ":memory:", "--audio-pace", "0", port=port)
    client = ces_nb.connect(APP, endpoint=f"127.0.0.1:{port}")
    opened = []  # a spy on the real call (it still goes to the real socket), to count attempts
    real_bidi = client.sessions.bidi_run_session
    monkeypatch.setattr(client.sessions, "bidi_run_session", lambda **kw: opened.append(1) or real_bidi(**kw))
    live = client.session().live()
    live.open()
    try:
        live.send_text("Hello")
        assert "traveler" in live.next_turn().text
        assert server.stop() == 0  # go_away, and no server comes back
        with pytest.raises(CesError, match="died: UNAVAILABLE") as err:  # the knocking ended: no timeout
            live.next_turn(timeout=30)
        assert len(opened) >= 3  # the first stream, then the reconnect knocked at least twice
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and live.reconnects == 1
    finally:
        live.close(5)
        client.close()


def test_voice_magics(voice_server, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("ces_nb")
    try:
        ip.run_line_magic("config", f"CesMagics.emulator_address = {voice_server.address!r}")
        ip.run_line_magic("cescmd", "new --app skyway")
        turn = ip.run_line_magic("cescmd", 'say "What is my loyalty tier?"')
        assert turn.heard == "what is my loyalty tier"
        speech = synthesize(normalize("How many bags can I check"))
        wav = tmp_path / "bags.wav"
        soundfile.write(wav, speech.samples, speech.sample_rate)
        live = ip.run_line_magic("cescmd", "live --rate 8000 --encoding ALAW")
        assert live.input_audio == {"audio_encoding": "ALAW", "sample_rate_hertz": 8000}
        by_file = ip.run_line_magic("ces", f"--audio {wav}")
        assert by_file.inputs[0].kind == "audio" and by_file.text
        assert ip.run_line_magic("cescmd", "say That's all, thanks. Goodbye!").ended  # no quoting needed
        ip.run_line_magic("cescmd", "live --close")
        for magic, line, words in [("cescmd", "say", "say what?"), ("ces", "--audio /no/such.wav", "no audio file"),
                                   ("ces", f"--audio {wav} and text", "a turn of its own"),
                                   ("cescmd", "live --close", "no live stream"),
                                   ("cescmd", "live --rate 11025", "sample_rate_hertz")]:
            with pytest.raises(UsageError, match=words):
                ip.run_line_magic(magic, line)
    finally:
        ip.extension_manager.unload_extension("ces_nb")


def test_a_call_that_is_over_takes_no_message_meant_for_the_next_one():
    """grpc's sending thread of a stream that got go_away, or of a refused reconnect knock, still
    waits in its request iterator: it must not take (and lose) what the client sends next."""
    outbox = _Outbox()
    took = []

    def sending_thread(call):  # as grpc's: takes the call's messages until its iterator ends
        thread = threading.Thread(target=lambda: took.extend(call))
        thread.start()
        return thread

    old = outbox.messages("config")
    assert next(old) == "config"
    waiting = sending_thread(old)
    outbox.retire()  # go_away
    waiting.join(30)
    knock = outbox.messages("config with history")
    assert next(knock) == "config with history"
    refused = sending_thread(knock)
    outbox.retire()  # the knock was refused
    refused.join(30)
    assert not waiting.is_alive() and not refused.is_alive() and took == []
    outbox.put("sent during the reconnect")
    new = outbox.messages("config with history")
    outbox.put("sent after it")
    outbox.put(None)  # half-close
    assert list(new) == ["config with history", "sent during the reconnect", "sent after it"]
    assert took == []
