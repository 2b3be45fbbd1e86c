# Audio files in, 16 kHz mono float32 samples out; and their duration for metering.
#
# Rules of this module:
# - Accepted containers are what libsndfile (through `soundfile`) decodes: WAV,
#   FLAC, OGG (Vorbis/Opus) and MP3, among others. Resampling to 16 kHz is
#   `soxr` (the SoX resampler, "HQ" quality); channels are averaged to mono.
# - Anything that does not decode, decodes to no samples, or is not valid base64
#   is InvalidTaskInput naming the field and why, never a crash of the node.
# - `audio_seconds(data)` is the duration of the decoded file (frames / sample
#   rate as the decoder reports them after decoding), which the coordinator and
#   API meter usage by; it never trusts a client's figure.
# - This module imports neither onnxruntime nor any model code: the API process
#   uses it to measure audio without loading inference libraries.
from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
import soundfile
import soxr

from engine.worker.runners.base import InvalidTaskInput
from engine.worker.runners.mel import SAMPLE_RATE

__all__ = [
    "SAMPLE_RATE",
    "audio_seconds",
    "decode_audio",
    "decode_audio_field",
    "load_audio",
]

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_audio_field(value: object, field: str = "audio") -> bytes:
    """The file bytes of a base64 task field (a `data:...;base64,` prefix is allowed)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidTaskInput(f"{field} must be a non-empty base64 string holding a WAV, FLAC, MP3 or OGG file")
    text = _DATA_URL.sub("", value.strip(), count=1)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidTaskInput(f"{field} is not valid base64: {exc}") from exc
    if not data:
        raise InvalidTaskInput(f"{field} decodes to an empty file")
    return data


def _read(data: bytes, field: str) -> tuple[np.ndarray, int]:
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidTaskInput(f"{field} is not a readable audio file (WAV, FLAC, MP3 or OGG expected): "
                               f"{exc}") from exc
    if samples.shape[0] == 0 or rate <= 0:
        raise InvalidTaskInput(f"{field} holds no audio samples")
    return samples, int(rate)


def audio_seconds(data: bytes, field: str = "audio") -> float:
    """Duration in seconds of the audio file `data` (raises InvalidTaskInput if unreadable)."""
    samples, rate = _read(data, field)
    seconds: float = samples.shape[0] / rate
    return seconds


def _mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_audio(data: bytes, field: str = "audio") -> np.ndarray:
    """Mono float32 samples at 16 kHz of the audio file `data`."""
    return _mono_16k(*_read(data, field))


def load_audio(value: object, field: str = "audio") -> tuple[np.ndarray, float]:
    """A base64 task field -> (16 kHz mono samples, duration in seconds of the file)."""
    samples, rate = _read(decode_audio_field(value, field), field)
    return _mono_16k(samples, rate), samples.shape[0] / rate
