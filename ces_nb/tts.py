"""Offline text-to-speech: espeak-ng through ctypes, library and voice data from the
espeakng-loader wheel (nothing is downloaded). Used by the emulator for the agent's
voice and by `%cescmd say` for the user's.

espeak-ng keeps global state, so one lock serializes synthesis in a process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # int16, mono
    sample_rate: int

    @property
    def duration_ms(self) -> float:
        return len(self.samples) / self.sample_rate * 1000


class _Engine:
    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(espeakng_loader.get_data_path()).encode(), 0)
        if rate <= 0:
            raise RuntimeError("espeak-ng did not initialize (espeakng-loader's data missing?)")
        self.sample_rate = rate
        self.chunks: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # kept alive for the library's sake
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voice = ""

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self.chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # keep going

    def synthesize(self, text: str, voice: str, rate_wpm: int) -> Speech:
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                if self.lib.espeak_SetVoiceByName(b"en-us") != 0:
                    raise RuntimeError(f"espeak-ng has no voice {voice!r} (nor en-us)")
            self.voice = voice
        self.lib.espeak_SetParameter(_RATE, rate_wpm, 0)
        self.chunks = []
        data = text.encode("utf-8") + b"\0"
        error = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if error != 0:
            raise RuntimeError(f"espeak-ng could not synthesize (error {error})")
        samples = np.frombuffer(b"".join(self.chunks), dtype=np.int16).copy()
        return Speech(samples, self.sample_rate)


@lru_cache(maxsize=1)
def _engine() -> _Engine:
    return _Engine()


def voice_for(language_code: str | None, configured: str | None = None) -> str:
    """An espeak-ng voice for a CES language code (en-US -> en-us), or the app's configured one."""
    if configured:
        return configured.lower()
    return (language_code or "en-US").lower()


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 170) -> Speech:
    """Speak `text`: 16-bit mono samples at espeak-ng's native rate (22 050 Hz)."""
    with _lock:
        return _engine().synthesize(text, voice, rate_wpm)
