"""Offline speech recognition for the emulator: pocketsphinx with its en-US model (shipped
in the wheel), constrained by a JSGF grammar built from the app's example user utterances
and variable values; the full language model takes over when the grammar finds nothing.

The decoder loads once per process; recognizers for different apps share it, each with
its own named grammar search, under one lock (pocketsphinx is not thread-safe).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np

SAMPLE_RATE = 16000  # the en-US acoustic model's rate
SILENCE_RMS = 150.0  # below this level an utterance is taken as silence, not guessed at
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d")
_lock = threading.Lock()


def normalize(text: str) -> str:
    """Words a recognizer can hear: lower case, no punctuation, letters stuck to digits split
    ("SW123" -> "s w one two three"), digits spoken one by one."""
    out: list[str] = []
    for word in text.lower().replace("&", " and ").split():
        if any(c.isdigit() for c in word):
            for piece in re.findall(r"[a-z]+|\d", word):
                if piece.isdigit():
                    out.append(DIGITS[int(piece)])
                else:
                    out.extend(piece)  # letters next to digits are spelled: "sw" -> "s", "w"
        else:
            out.extend(_TOKEN.findall(word))
    return " ".join(out)


@dataclass(frozen=True)
class Recognition:
    transcript: str
    source: str  # "grammar" or "language model" (or "" for silence)


@lru_cache(maxsize=1)
def _decoder():
    from pocketsphinx import Decoder

    return Decoder(loglevel="FATAL")  # "final result does not match the grammar" is expected, and handled


class Recognizer:
    """Recognizes utterances of one app."""

    _count = 0

    def __init__(self, phrases: Iterable[str]):
        decoder = _decoder()
        alternatives = []
        for phrase in dict.fromkeys(normalize(p) for p in phrases if p):
            words = phrase.split()
            if words and all(decoder.lookup_word(w) is not None for w in words):
                alternatives.append(phrase)
        with _lock:
            Recognizer._count += 1
            self.search = f"app{Recognizer._count}" if alternatives else None
            self.prefix_search = f"{self.search}_prefix" if self.search else None
            if self.search:
                body = " | ".join(alternatives)
                decoder.add_jsgf_string(self.search, f"#JSGF V1.0;\ngrammar {self.search};\npublic <utt> = {body} ;\n")
                # Every start of a phrase, for partial results: the phrase grammar only answers once a
                # phrase is complete, and the language model is ~20x slower on the growing audio.
                body = " | ".join(_prefixes(a.split()) for a in alternatives)
                decoder.add_jsgf_string(self.prefix_search, f"#JSGF V1.0;\ngrammar {self.prefix_search};\npublic <utt> = {body} ;\n")
        self.phrases = alternatives

    def recognize(self, samples: np.ndarray, snap: bool = True) -> Recognition:
        """A whole utterance (int16 at 16 kHz) -> its transcript ("" for silence). With `snap`, a
        transcript off the grammar becomes the nearest grammar phrase when one is close."""
        samples = np.asarray(samples, dtype=np.int16)
        if not len(samples) or float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) < SILENCE_RMS:
            return Recognition("", "")
        pcm = samples.tobytes()
        with _lock:
            decoder = _decoder()
            if self.search:
                text = self._run(decoder, self.search, pcm)
                if text in self.phrases:
                    return Recognition(text, "grammar")
                if text and not snap:
                    return Recognition(text, "grammar")
                if text:  # the search ended off the grammar's paths: take the phrase it was on
                    nearest = self.nearest(text)
                    if nearest:
                        return Recognition(nearest, "grammar (nearest)")
            text = self._run(decoder, "_default", pcm)
        nearest = self.nearest(text) if snap else ""
        if nearest:
            return Recognition(nearest, "grammar (nearest)")
        return Recognition(text, "language model" if text else "")

    def nearest(self, text: str, cutoff: float = 0.6) -> str:
        """The grammar phrase closest to a free transcript, word by word, if it is close enough:
        the grammar search gives up on an utterance clipped at either end, the language model
        still hears most of its words."""
        import difflib

        words = text.split()
        if not words or not self.phrases:
            return ""
        best, score = "", 0.0
        for phrase in self.phrases:
            ratio = difflib.SequenceMatcher(None, words, phrase.split(), autojunk=False).ratio()
            if ratio > score:
                best, score = phrase, ratio
        return best if score >= cutoff else ""

    @staticmethod
    def _run(decoder, search: str, pcm: bytes) -> str:
        decoder.activate_search(search)
        decoder.start_utt()
        decoder.process_raw(pcm, False, True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def complete_phrase(self, samples: np.ndarray) -> Recognition:
        """The grammar phrase the audio so far says in full, or Recognition("", "") when it
        says none (or only the start of one): the endpointer ends the turn sooner on a
        complete phrase. Only the grammar search runs, so this costs one short decode."""
        samples = np.asarray(samples, dtype=np.int16)
        if not self.search or not len(samples) or float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) < SILENCE_RMS:
            return Recognition("", "")
        with _lock:
            text = self._run(_decoder(), self.search, samples.tobytes())
        return Recognition(text, "grammar") if text in self.phrases else Recognition("", "")

    def partial(self, samples: np.ndarray) -> str:
        """The transcript so far of an utterance still being spoken (for recognition_result): the
        start of a grammar phrase it matches best. Off the grammar that is a guess; the final
        transcript (recognize) falls back to the language model."""
        samples = np.asarray(samples, dtype=np.int16)
        if not len(samples) or float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) < SILENCE_RMS:
            return ""
        if not self.prefix_search:
            return self.recognize(samples, snap=False).transcript
        with _lock:
            return self._run(_decoder(), self.prefix_search, samples.tobytes())


def _prefixes(words: list[str]) -> str:
    """JSGF for every start of a phrase: "a [b [c]]"."""
    return words[0] + "".join(f" [{w}" for w in words[1:]) + "]" * (len(words) - 1)


def app_phrases(app) -> list[str]:
    """Example user utterances and variable values of a LoadedApp: what the grammar accepts."""
    from google.cloud import ces_v1

    phrases: list[str] = []
    for example in app.examples:
        for message in example.messages:
            if message.role != "user":
                continue
            for chunk in message.chunks:
                if ces_v1.Chunk.pb(chunk).WhichOneof("data") == "text":
                    phrases.append(chunk.text)
    for declaration in getattr(app.app, "variable_declarations", []) or []:
        phrases.extend(str(v) for v in declaration.schema.enum)  # e.g. loyalty tiers: "Gold"
    return phrases
