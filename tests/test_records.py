"""Turn, Output, Span, Transcript are plain records: typed outputs with the transcript JSON of
old, no session, no widgets and no network; a session's LiveTurn is the interactive view."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

import ces_nb
from ces_nb.convert.session_output import turn_from_outputs
from ces_nb.model import (
    OUTPUT_TYPES,
    AudioOutput,
    CitationsOutput,
    EndSessionOutput,
    Output,
    PayloadOutput,
    SearchSuggestionsOutput,
    TextOutput,
    ToolCallsOutput,
    Transcript,
    Turn,
)

from conftest import APP
from test_model import full_outputs

# A turn of every output kind as the transcript file holds it (format version 1).
SAVED_OUTPUTS = [
    {"text": "Hello **there**.", "turn_index": 3},
    {"audio": "AQACAA==", "turn_index": 3},
    {"tool_calls": {"tool_calls": [{"id": "c1", "tool": "projects/test-project/locations/us/apps/skyway/tools/select_seat",
                                    "display_name": "select_seat", "args": {"prefs": ["aisle"], "row": 12.0}}]}, "turn_index": 3},
    {"citations": {"cited_chunks": [{"title": "Baggage", "uri": "https://x.example/b", "text": "One bag.",
                                     "requires_attribution": True}]}, "turn_index": 3},
    {"google_search_suggestions": {"htmls": ["<div>chip</div>"],
                                   "web_search_queries": [{"query": "denver snow", "uri": "https://g.example/?q=denver"}]},
     "turn_index": 3},
    {"payload": {"boarding_pass": {"gate": "A4", "seat": "12C"}}, "turn_index": 3},
    {"end_session": {"metadata": {"reason": "done"}}, "turn_index": 3, "turn_completed": True},
]


def test_each_output_kind_is_its_own_class_and_saves_as_before():
    turn = turn_from_outputs(full_outputs())
    assert [type(o) for o in turn.outputs] == [TextOutput, AudioOutput, ToolCallsOutput, CitationsOutput,
                                               SearchSuggestionsOutput, PayloadOutput, EndSessionOutput]
    assert [o.kind for o in turn.outputs] == ["text", "audio", "tool_calls", "citations", "google_search_suggestions", "payload",
                                             "end_session"]  # named as the proto's fields
    assert set(OUTPUT_TYPES) == {o.kind for o in turn.outputs}
    assert turn.to_dict()["outputs"] == SAVED_OUTPUTS
    again = Turn.from_dict(turn.to_dict())
    assert again == turn and [type(o) for o in again.outputs] == [type(o) for o in turn.outputs]
    assert turn.of_kind("payload") == turn.payloads == [{"boarding_pass": {"gate": "A4", "seat": "12C"}}]
    assert turn.search_suggestions[0].queries[0]["query"] == "denver snow"


def test_the_output_base_refuses_the_old_kind_first_call():
    with pytest.raises(TypeError, match="TextOutput"):
        Output("text", "Hello")
    assert Output.of("text", "Hello", 2) == TextOutput("Hello", 2)


def test_a_saved_transcript_file_still_loads():
    transcript = Transcript.load("tests/apps/acme_recordings/cancel_then_return.transcript.json", strict=True)
    assert transcript.turns and all(isinstance(o, Output) and type(o) is not Output for t in transcript for o in t.outputs)
    assert any(t.text for t in transcript) and any(t.tool_calls for t in transcript)


def _one_turn(text: str) -> Transcript:
    return Transcript([Turn.from_dict({"outputs": [{"text": text, "turn_index": 1}]})], session="s")


def test_save_over_a_file_replaces_it_keeping_its_mode_and_leaving_nothing_beside_it(tmp_path):
    import os

    path = tmp_path / "trip.json"
    _one_turn("first").save(path)
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    with open(path, "rb") as reader:  # a reader of the old file keeps reading the old file
        _one_turn("second").save(path)
        assert b"first" in reader.read()
    assert path.stat().st_ino != inode and path.stat().st_mode & 0o777 == 0o640
    assert Transcript.load(path).turns[0].text == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trip.json"]


def test_save_through_a_symlink_replaces_the_file_it_names_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.json"
    _one_turn("first").save(real)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    _one_turn("second").save(link)
    assert link.is_symlink() and Transcript.load(real).turns[0].text == "second"


def test_a_save_that_fails_midway_leaves_the_old_transcript_and_no_partial_file(tmp_path, monkeypatch):
    import os

    path = tmp_path / "trip.json"
    _one_turn("first").save(path)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _one_turn("second").save(path)
    assert Transcript.load(path).turns[0].text == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trip.json"]


def test_save_over_a_hard_linked_file_writes_it_in_place_so_every_name_sees_the_new_turns(tmp_path):
    import os

    path = tmp_path / "trip.json"
    _one_turn("first").save(path)
    os.link(path, tmp_path / "backup.json")
    inode = path.stat().st_ino
    _one_turn("second").save(path)
    assert path.stat().st_ino == inode and Transcript.load(tmp_path / "backup.json").turns[0].text == "second"


def _save_as_nobody(path, text: str) -> str:
    """Save as uid/gid 65534 (root forks and drops to it; anyone else saves as themselves): "saved",
    or the error's class and message."""
    import os

    def save() -> str:
        try:
            _one_turn(text).save(path)
            return "saved"
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    if os.geteuid() != 0:
        return save()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, save().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        return answer.read()


@pytest.fixture
def open_folder():
    """A folder anyone can reach and write (pytest's tmp_path sits in root's 0700 folder)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="ces-nb-save-"))
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as_nobodys(path):
    import os

    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)


def test_save_refuses_a_read_only_file_and_keeps_it(open_folder):
    import os

    path = open_folder / "keep.json"
    _one_turn("precious").save(path)
    _as_nobodys(path)
    os.chmod(path, 0o444)
    assert _save_as_nobody(path, "overwritten").startswith("PermissionError")
    assert Transcript.load(path).turns[0].text == "precious"


def test_save_into_a_folder_it_cannot_write_writes_the_file_in_place(open_folder):
    import os

    folder = open_folder / "shared"
    folder.mkdir()
    path = folder / "trip.json"
    _one_turn("old").save(path)
    _as_nobodys(path)
    os.chmod(folder, 0o555 if os.geteuid() != 0 else 0o755)  # root owns it: nobody cannot write it
    try:
        assert _save_as_nobody(path, "new") == "saved"
    finally:
        os.chmod(folder, 0o755)
    assert Transcript.load(path).turns[0].text == "new" and sorted(p.name for p in folder.iterdir()) == ["trip.json"]


def test_root_saving_another_users_file_leaves_it_theirs(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("only root can save a file another user owns")
    path = tmp_path / "theirs.json"
    _one_turn("a").save(path)
    os.chown(path, 65534, 65534)
    _one_turn("b").save(path)
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534) and Transcript.load(path).turns[0].text == "b"


def test_a_turn_holds_no_session_and_renders_without_widgets_or_the_network():
    assert "session" not in Turn.__dataclass_fields__ and not hasattr(Turn, "_ipython_display_")
    code = """
import sys
sys.path.insert(0, "tests")
from conftest import APP
from test_model import full_outputs
from ces_nb.convert.session_output import turn_from_outputs
before = set(sys.modules)
from ces_nb.model import Transcript
turn = turn_from_outputs(full_outputs())
bundle = Transcript([turn])._repr_mimebundle_()
assert "select_seat" in bundle["text/html"] and "Turn 3" in bundle["text/plain"]
loaded = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("ipywidgets", "IPython", "grpc", "google") or m.startswith("ces_nb.session") or m.startswith("ces_nb.client"))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out  # records and renderers load no widgets, no gRPC, no client


@pytest.fixture
def client(emulator):
    c = ces_nb.connect(APP, endpoint=emulator.address)
    yield c
    c.close()


def test_a_live_turn_reads_as_its_record(client):
    from ces_nb import frames
    from ces_nb.session import LiveTurn

    session = client.session()
    live = session.send("Hello")
    assert isinstance(live, LiveTurn) and live.record is session.turns[-1] and live.session is session
    assert live == live.record and live.to_dict() == live.record.to_dict() and live.text == live.record.text
    assert repr(live) == repr(live.record) == live._repr_mimebundle_()["text/plain"]
    live.notes.append("checked")
    live.partial = True  # attributes set on the view land on the record
    assert live.record.partial and live.record.notes[-1] == "checked"
    assert list(frames.turns_frame(live).turn) == [live.index] == list(frames.turns_frame([live]).turn)
    assert live.panel() is None  # no pending calls, no form
    copied = copy.copy(live)
    assert copied.record is live.record and copied.session is session
