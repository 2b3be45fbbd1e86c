# Verifying speech-to-text and image results: re-execution, then a comparison that
# survives floating-point differences between machines.
#
#     verdict = judge_transcript(mine, claimed)          # word error rate
#     verdict = judge_image(mine_png, claimed_output)    # PSNR of downsampled images
#
# Theory of operation. Whisper decodes greedily and Stable Diffusion's only
# randomness is the seeded initial noise, so the validator re-runs the task with
# the same inputs and params (and, for an image, the seed the producer reports in
# its output) and compares. Re-execution costs what the task cost (~100% of the
# verified work): the core samples these kinds rather than checking them all.
# - Speech: the word error rate of the claimed transcript against the validator's
#   own (words lower-cased, punctuation dropped) must be at most MAX_WER. An
#   honest rerun differs by a word at most, where two candidates' logits tie; a
#   wrong or fabricated transcript differs by most of its words.
# - Images: both PNGs are decoded, must have the same size, are averaged down to
#   at most COMPARE_SIDE pixels a side (so a pixel's last-bit rounding does not
#   count) and compared by PSNR (dB, 8-bit RGB); at least MIN_PSNR_DB passes.
#   Honest reruns under other ONNX Runtime threads / optimisation levels give
#   identical or near-identical images (>= 98 dB measured on CPU; CPU vs CUDA is
#   not calibrated yet: no GPU was lent); another seed gives ~20 dB, and even on
#   the random-weight stand-in pack (whose images barely depend on the prompt)
#   another step count, scheduler or guidance scale gives 23-34 dB.
# - The score is the agreement: 1 - WER (floored at 0) for speech; 1 - RMSE/255
#   for images (1.0 = identical).
# A claimed value of the wrong shape is a failed verdict, never an exception.
from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.worker.runners.base import Verdict

__all__ = ["COMPARE_SIDE", "MAX_WER", "MIN_PSNR_DB", "judge_image", "judge_transcript", "psnr",
           "word_error_rate"]

MAX_WER = 0.15
COMPARE_SIDE = 64
MIN_PSNR_DB = 40.0


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference length, ignoring case and punctuation
    (0 when both are empty; the hypothesis's length when only the reference is)."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[len(hyp)] / max(1, len(ref))


def judge_transcript(mine: str, claimed: Any) -> Verdict:
    """The claimed transcript against the validator's own re-run."""
    if not isinstance(claimed, str):
        return Verdict(False, 0.0, f"the claimed output is a {type(claimed).__name__}, not a transcript")
    wer = word_error_rate(mine, claimed)
    passed = wer <= MAX_WER
    detail = f"re-run transcript vs claimed: word error rate {wer:.3f} (at most {MAX_WER}) over " \
             f"{len(_words(mine))} words"
    return Verdict(passed, max(0.0, 1.0 - wer), detail)


def _decode_png(encoded: Any) -> np.ndarray:
    """base64 PNG -> uint8 RGB [H, W, 3]; ValueError saying what is wrong."""
    from PIL import Image, UnidentifiedImageError  # lazy: only image checks need Pillow

    if not isinstance(encoded, str):
        raise ValueError(f"image_png_base64 is a {type(encoded).__name__}, not a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"the image is {image.format}, not PNG")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image_png_base64 is not a base64 PNG ({exc})") from exc


def _downsample(image: np.ndarray, side: int) -> np.ndarray:
    """Average over blocks so that neither side exceeds `side` (float64 [h, w, 3])."""
    height, width = image.shape[:2]
    factor = max(1, math.ceil(max(height, width) / side))
    h, w = height // factor, width // factor
    blocks = image[:h * factor, :w * factor].astype(np.float64).reshape(h, factor, w, factor, 3)
    result: np.ndarray = blocks.mean(axis=(1, 3))
    return result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit images of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def judge_image(mine_png_base64: str, claimed: Any) -> Verdict:
    """The claimed image output (the runner's dict, or its base64 PNG alone) against
    the validator's own re-run."""
    encoded = claimed.get("image_png_base64") if isinstance(claimed, Mapping) else claimed
    try:
        theirs = _decode_png(encoded)
    except ValueError as exc:
        return Verdict(False, 0.0, f"the claimed image: {exc}")
    mine = _decode_png(mine_png_base64)
    if theirs.shape != mine.shape:
        return Verdict(False, 0.0, f"the claimed image is {theirs.shape[1]}x{theirs.shape[0]}; "
                                   f"the re-run's is {mine.shape[1]}x{mine.shape[0]}")
    small_mine, small_theirs = _downsample(mine, COMPARE_SIDE), _downsample(theirs, COMPARE_SIDE)
    value = psnr(small_mine, small_theirs)
    rmse = float(np.sqrt(np.mean((small_mine - small_theirs) ** 2)))
    shown = "identical" if math.isinf(value) else f"{value:.1f} dB"
    return Verdict(value >= MIN_PSNR_DB, 1.0 - rmse / 255.0,
                   f"re-run image vs claimed, downsampled to {small_mine.shape[1]}x{small_mine.shape[0]}: "
                   f"PSNR {shown} (at least {MIN_PSNR_DB:g} dB)")
