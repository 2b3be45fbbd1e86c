from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from engine.worker.runners.audio import audio_seconds, decode_audio, decode_audio_field, load_audio
from engine.worker.runners.base import InvalidTaskInput, ModelLoadError
from engine.worker.runners.mel import (
    CHUNK_SAMPLES,
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    MelSpec,
    log_mel_spectrogram,
    mel_filters,
    windows,
)

from .helpers import word_error_rate

WHISPER_FILTERS = Path(__file__).parent / "data" / "whisper_mel_filters.npz"


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_the_filterbank_whisper_ships(n_mels: int) -> None:
    with np.load(WHISPER_FILTERS) as published:
        expected = published[f"mel_{n_mels}"]
    computed = mel_filters(n_mels)
    assert computed.shape == expected.shape == (n_mels, N_FFT // 2 + 1)
    np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-8)


def _reference_log_mel(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Whisper's features by the textbook: explicit DFT sums, one frame at a time."""
    padded = np.zeros(CHUNK_SAMPLES, np.float64)
    padded[:len(audio)] = audio
    padded = np.concatenate([padded[1:201][::-1], padded, padded[-201:-1][::-1]])  # reflect, n_fft / 2
    n = np.arange(N_FFT)
    window = 0.5 * (1 - np.cos(2 * np.pi * n / N_FFT))
    k = np.arange(N_FFT // 2 + 1)
    cos, sin = np.cos(2 * np.pi * np.outer(n, k) / N_FFT), np.sin(2 * np.pi * np.outer(n, k) / N_FFT)
    power = np.empty((N_FRAMES, len(k)))
    for frame in range(N_FRAMES):
        segment = padded[frame * HOP_LENGTH:frame * HOP_LENGTH + N_FFT] * window
        power[frame] = (segment @ cos) ** 2 + (segment @ sin) ** 2
    log_spec = np.log10(np.maximum(filters.astype(np.float64) @ power.T, 1e-10))
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def test_log_mel_matches_a_direct_dft_reference() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(3 * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    with np.load(WHISPER_FILTERS) as published:
        filters = published["mel_80"]
    features = log_mel_spectrogram(audio, MelSpec.default())
    assert features.shape == (80, N_FRAMES) and features.dtype == np.float32
    np.testing.assert_allclose(features, _reference_log_mel(audio, filters), atol=2e-4)
    assert features[:, -1000:].min() == pytest.approx(features.max() - 2.0, abs=1e-6)  # padded silence clamps


def test_windows_cut_long_audio_into_consecutive_30_second_pieces() -> None:
    audio = np.arange(CHUNK_SAMPLES * 2 + 5, dtype=np.float32)
    pieces = list(windows(audio))
    assert [len(piece) for piece in pieces] == [CHUNK_SAMPLES, CHUNK_SAMPLES, 5]
    np.testing.assert_array_equal(np.concatenate(pieces), audio)
    assert list(windows(np.zeros(0, np.float32))) == []


def _encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"),
                                          ("MP3", "MPEG_LAYER_III")])
def test_all_four_formats_decode_to_16khz_mono_with_their_duration(fmt: str, subtype: str | None) -> None:
    rate, seconds = 44100, 1.5
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1).astype(np.float32)
    data = _encode(stereo, rate, fmt, subtype)
    assert audio_seconds(data) == pytest.approx(seconds, abs=0.06)  # MP3 frames pad a little
    decoded = decode_audio(data)
    assert decoded.dtype == np.float32 and abs(len(decoded) / 16000 - seconds) < 0.06
    segment = decoded[2000:18000]
    spectrum = np.abs(np.fft.rfft(segment))
    assert np.argmax(spectrum) * 16000 / len(segment) == pytest.approx(440, abs=2)  # the tone survived


def test_unreadable_audio_is_invalid_input_naming_the_field() -> None:
    with pytest.raises(InvalidTaskInput, match="audio is not a readable audio file"):
        decode_audio(b"this is not audio at all" * 10)
    with pytest.raises(InvalidTaskInput, match="audio is not valid base64"):
        decode_audio_field("not base64 !!")
    with pytest.raises(InvalidTaskInput, match="audio must be a non-empty base64 string"):
        decode_audio_field(None)
    with pytest.raises(InvalidTaskInput, match="holds no audio samples"):
        audio_seconds(_encode(np.zeros(0, np.float32), 16000, "WAV"))


def test_load_audio_accepts_a_data_url_and_measures_the_file() -> None:
    data = _encode(np.zeros(8000, np.float32), 8000, "WAV")
    samples, seconds = load_audio("data:audio/wav;base64," + base64.b64encode(data).decode())
    assert seconds == 1.0 and len(samples) == 16000


def test_word_error_rate_counts_word_edits() -> None:
    assert word_error_rate("the cat sat", "The cat sat.") == 0.0
    assert word_error_rate("the cat sat on the mat", "the bat sat on mat") == pytest.approx(2 / 6)
    assert word_error_rate("a b", "a b c d") == 1.0


def test_the_metering_module_does_not_load_onnxruntime() -> None:
    code = ("import sys, engine.worker.runners.audio as audio; "
            "assert callable(audio.audio_seconds); assert 'onnxruntime' not in sys.modules, 'onnxruntime loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


def test_a_preprocessor_config_sets_the_features() -> None:
    with np.load(WHISPER_FILTERS) as published:
        expected = published["mel_80"]
    computed = MelSpec.from_preprocessor({"feature_size": 80, "n_fft": 400, "hop_length": 160}, 80)
    np.testing.assert_allclose(computed.filters, expected, rtol=1e-5, atol=1e-8)
    given = MelSpec.from_preprocessor({"mel_filters": (2 * expected).T.tolist(), "n_samples": 160000}, 80)
    np.testing.assert_allclose(given.filters, 2 * expected)  # HF's [freq, mel] orientation, used as given
    assert (given.n_frames, given.n_mels) == (1000, 80)
    with pytest.raises(ModelLoadError, match="mel_filters has shape"):
        MelSpec.from_preprocessor({"mel_filters": [[0.0] * 3]}, 80)
