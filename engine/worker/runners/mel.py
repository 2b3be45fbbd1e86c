# Whisper's log-mel spectrogram, in numpy.
#
# Rules of this module (they match OpenAI Whisper's `log_mel_spectrogram` and the
# Hugging Face WhisperFeatureExtractor):
# - Input is mono float32 audio at 16 kHz, cut into consecutive 30 s windows
#   (480,000 samples); the last window is zero-padded to full length.
# - Per window: a centred STFT (reflect padding of n_fft // 2), periodic Hann
#   window of n_fft = 400 samples, hop 160, power spectrum |X|^2; the last of the
#   3001 frames is dropped, leaving 3000 frames.
# - Mel filterbank: librosa's default `filters.mel(sr=16000, n_fft=400, n_mels)`,
#   i.e. the Slaney mel scale (linear below 1 kHz, logarithmic above) with Slaney
#   area normalisation (2 / bandwidth), from 0 Hz to sr / 2. It is computed here
#   (float64, returned as float32), unless the model's preprocessor config carries
#   its own `mel_filters` (MelSpec.from_preprocessor).
# - Log compression: log10(max(mel, 1e-10)), then clamped from below at
#   (window maximum - 8), then (x + 4) / 4.
#
# Theory of operation: the STFT frames are strided views of the padded window
# (no copies until the FFT), transformed with numpy's real FFT in one call.
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import numpy as np

from engine.worker.runners.base import ModelLoadError

__all__ = [
    "CHUNK_SAMPLES",
    "CHUNK_SECONDS",
    "HOP_LENGTH",
    "N_FFT",
    "N_FRAMES",
    "SAMPLE_RATE",
    "MelSpec",
    "hz_to_mel",
    "log_mel_spectrogram",
    "mel_filters",
    "mel_to_hz",
    "windows",
]

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000
N_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3,000

_F_SP = 200.0 / 3  # Slaney: 66.67 Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    logarithmic = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, logarithmic, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = _F_SP * mel
    logarithmic = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, logarithmic, linear)


def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular Slaney-normalised filters, [n_mels, n_fft // 2 + 1] float32."""
    fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@attrs.frozen(eq=False)
class MelSpec:
    """Feature-extraction settings of one model (preprocessor_config.json)."""

    filters: np.ndarray  # [n_mels, n_fft // 2 + 1]
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    chunk_samples: int = CHUNK_SAMPLES

    @property
    def n_mels(self) -> int:
        return int(self.filters.shape[0])

    @property
    def n_frames(self) -> int:
        return self.chunk_samples // self.hop_length

    @classmethod
    def default(cls, n_mels: int = 80) -> MelSpec:
        return cls(mel_filters(n_mels))

    @classmethod
    def from_preprocessor(cls, config: Mapping[str, Any], n_mels: int) -> MelSpec:
        """The settings of a Hugging Face preprocessor_config.json (absent keys: Whisper's).

        Its `mel_filters`, when present, are used as given (the HF feature extractor
        keeps them [freq, mel]; either orientation is accepted)."""
        n_fft, hop = int(config.get("n_fft", N_FFT)), int(config.get("hop_length", HOP_LENGTH))
        samples = int(config.get("n_samples", CHUNK_SAMPLES))
        given = config.get("mel_filters")
        if given is None:
            filters = mel_filters(n_mels, int(config.get("sampling_rate", SAMPLE_RATE)), n_fft)
        else:
            filters = np.asarray(given, dtype=np.float32)
            if filters.shape == (n_fft // 2 + 1, n_mels):
                filters = filters.T
            if filters.shape != (n_mels, n_fft // 2 + 1):
                raise ModelLoadError(f"preprocessor mel_filters has shape {filters.shape}; expected "
                                     f"({n_mels}, {n_fft // 2 + 1}) or its transpose")
        return cls(filters, n_fft, hop, samples)


def windows(audio: np.ndarray, chunk_samples: int = CHUNK_SAMPLES) -> Iterator[np.ndarray]:
    """Consecutive windows of `chunk_samples` (the last one shorter; none for no audio)."""
    for start in range(0, len(audio), chunk_samples):
        yield audio[start:start + chunk_samples]


def log_mel_spectrogram(window: np.ndarray, spec: MelSpec | None = None) -> np.ndarray:
    """Whisper's log-mel features of one window (zero-padded to full length): [n_mels, n_frames]."""
    spec = spec or MelSpec.default()
    samples = np.zeros(spec.chunk_samples, dtype=np.float32)
    window = np.asarray(window, dtype=np.float32)[:spec.chunk_samples]
    samples[:len(window)] = window
    half = spec.n_fft // 2
    padded = np.pad(samples, (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[::spec.hop_length][:spec.n_frames]
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.n_fft) / spec.n_fft)).astype(np.float32)
    power = np.abs(np.fft.rfft(frames * hann, axis=-1)) ** 2  # [n_frames, n_fft // 2 + 1]
    mel = spec.filters @ power.T.astype(np.float32)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    normalised: np.ndarray = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return normalised
