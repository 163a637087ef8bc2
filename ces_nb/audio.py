"""Audio bytes in CES encodings <-> arrays and WAV files (libsndfile through soundfile)."""

from __future__ import annotations

import io

# CES AudioEncoding -> libsndfile RAW subtype
SUBTYPES = {"LINEAR16": "PCM_16", "MULAW": "ULAW", "ALAW": "ALAW"}


def to_wav(data: bytes, encoding: str = "LINEAR16", sample_rate: int = 16000) -> bytes:
    """Raw CES audio (headerless LINEAR16 / MULAW / ALAW) -> a 16-bit WAV file; WAV input passes through."""
    import soundfile

    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return data
    subtype = SUBTYPES.get(str(encoding).upper().replace("AUDIO_ENCODING_", ""), "PCM_16")
    if subtype == "PCM_16" and len(data) % 2:
        data = data[:-1]  # a torn last sample
    samples, rate = soundfile.read(io.BytesIO(data), format="RAW", subtype=subtype, samplerate=sample_rate,
                                   channels=1, endian="LITTLE", dtype="int16")
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()
