"""Audio in CES encodings: decode, encode, resample, chunk, and WAV for players.

All on soundfile (libsndfile's RAW PCM_16 / ULAW / ALAW subtypes: no hand-written
G.711 tables), numpy and soxr.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np

# CES AudioEncoding -> libsndfile RAW subtype
SUBTYPES = {"LINEAR16": "PCM_16", "MULAW": "ULAW", "ALAW": "ALAW"}
SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
BYTES_PER_SAMPLE = {"LINEAR16": 2, "MULAW": 1, "ALAW": 1}


def encoding_name(encoding) -> str:
    """'LINEAR16' from 'LINEAR16', 'AUDIO_ENCODING_LINEAR16', or the proto enum."""
    name = getattr(encoding, "name", encoding)
    name = str(name or "LINEAR16").upper().replace("AUDIO_ENCODING_", "")
    if name not in SUBTYPES:
        raise ValueError(f"audio encoding {name!r} is not one of {', '.join(SUBTYPES)}")
    return name


def decode(data: bytes, encoding="LINEAR16", sample_rate: int = 16000) -> np.ndarray:
    """Headerless CES audio -> int16 samples (mono)."""
    import soundfile

    name = encoding_name(encoding)
    width = BYTES_PER_SAMPLE[name]
    data = data[: len(data) - len(data) % width]  # a torn last sample
    if not data:
        return np.zeros(0, dtype=np.int16)
    samples, _ = soundfile.read(io.BytesIO(data), format="RAW", subtype=SUBTYPES[name], samplerate=sample_rate,
                                channels=1, endian="LITTLE", dtype="int16")
    return samples


def encode(samples: np.ndarray, encoding="LINEAR16", sample_rate: int = 16000) -> bytes:
    """int16 (or float in [-1, 1]) samples -> headerless CES audio."""
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, _int16(samples), sample_rate, format="RAW", subtype=SUBTYPES[encoding_name(encoding)], endian="LITTLE")
    return out.getvalue()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """int16 samples at another rate (soxr, high quality)."""
    if from_rate == to_rate or not len(samples):
        return _int16(samples)
    import soxr

    return soxr.resample(_int16(samples), from_rate, to_rate)


def _int16(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if samples.dtype == np.int16:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
    return np.clip(samples, -32768, 32767).astype(np.int16)


def read(source, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A file soundfile reads (WAV, FLAC, OGG ...), WAV bytes, or (samples, rate) -> int16 mono samples and rate,
    resampled to `sample_rate` when given."""
    import soundfile

    if isinstance(source, tuple):
        samples, rate = _int16(source[0]), int(source[1])
    else:
        target = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(Path(source))
        samples, rate = soundfile.read(target, dtype="int16", always_2d=False)
        samples = _int16(samples)
    if sample_rate and rate != sample_rate:
        samples, rate = resample(samples, rate, sample_rate), sample_rate
    return samples, rate


def chunks(data: bytes, encoding="LINEAR16", sample_rate: int = 16000, ms: int = 100) -> Iterator[bytes]:
    """Encoded audio cut into `ms` pieces (whole samples), as a client streams it."""
    step = max(1, sample_rate * ms // 1000) * BYTES_PER_SAMPLE[encoding_name(encoding)]
    for start in range(0, len(data), step):
        yield data[start:start + step]


def to_wav(data: bytes, encoding="LINEAR16", sample_rate: int = 16000) -> bytes:
    """Raw CES audio (LINEAR16 / MULAW / ALAW) -> a 16-bit WAV file for players; WAV passes through."""
    import soundfile

    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return data
    out = io.BytesIO()
    soundfile.write(out, decode(data, encoding, sample_rate), sample_rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def rms(samples: np.ndarray) -> float:
    """Root-mean-square level of int16 samples (0..32767)."""
    if not len(samples):
        return 0.0
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
