# CLIP's BPE tokenizer, built with the `tokenizers` library from the vocab.json +
# merges.txt of a Stable Diffusion export's `tokenizer/` directory.
#
# Rules of this module:
# - The pipeline is the one transformers' CLIPTokenizerFast converter builds (its
#   CLIPConverter): NFC, runs of whitespace -> one space, lowercase; CLIP's
#   pre-tokenisation regex ('s|'t|'re|'ve|'m|'ll|'d|letters+|one digit|other
#   non-space runs, whitespace removed), then byte-level mapping; BPE with the
#   "</w>" end-of-word suffix and no continuing-subword prefix.
# - `encode` gives exactly `max_length` ids: bos, the prompt's ids truncated to
#   max_length - 2, eos, then pad ids (CLIP's "padding=max_length,
#   truncation=True"). bos/eos/pad/unk and model_max_length come from
#   tokenizer_config.json / special_tokens_map.json (a token is a string or a
#   {"content": ...} object); the defaults are CLIP's: <|startoftext|> (49406 in
#   the real vocab), <|endoftext|> (49407) as eos, pad and unk, and 77.
# - Every special token must be in the vocab; anything missing or unreadable is a
#   ModelLoadError naming the file.
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from engine.worker.runners.base import ModelLoadError, read_json_object

__all__ = [
    "BOS_TOKEN",
    "CLIP_SPLIT_PATTERN",
    "DEFAULT_MAX_LENGTH",
    "EOS_TOKEN",
    "ClipTokenizer",
    "build_clip_tokenizer",
    "load_clip_tokenizer",
    "read_json_object",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
DEFAULT_MAX_LENGTH = 77
END_OF_WORD = "</w>"
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_MAX_SANE_LENGTH = 4096  # transformers writes a huge sentinel when there is no limit


def build_clip_tokenizer(vocab_path: Path, merges_path: Path, unk_token: str = EOS_TOKEN) -> Tokenizer:
    """The CLIP BPE pipeline (see the module rules) on these vocab/merges files."""
    model = BPE.from_file(
        str(vocab_path), str(merges_path),
        continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=unk_token,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@attrs.frozen
class ClipTokenizer:
    """Fixed-length CLIP token ids for the text encoder."""

    tokenizer: Tokenizer
    bos_id: int
    eos_id: int
    pad_id: int
    max_length: int = DEFAULT_MAX_LENGTH

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """(ids int64 [max_length], how many prompt tokens were cut off)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        room = self.max_length - 2
        kept = [self.bos_id, *ids[:room], self.eos_id]
        padded = kept + [self.pad_id] * (self.max_length - len(kept))
        return np.asarray(padded, np.int64), max(0, len(ids) - room)

    def token_count(self, text: str) -> int:
        """Prompt tokens (without bos/eos), before truncation."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)



def _token(settings: Mapping[str, Any], key: str, default: str) -> str:
    value = settings.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


def load_clip_tokenizer(directory: Path, max_length: int | None = None) -> ClipTokenizer:
    """The tokenizer of an SD export's tokenizer/ directory; `max_length` overrides the config's."""
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise ModelLoadError(f"missing CLIP tokenizer file {path}")
    settings = {**read_json_object(directory / "special_tokens_map.json"),
                **read_json_object(directory / "tokenizer_config.json")}
    names = {
        "bos": _token(settings, "bos_token", BOS_TOKEN),
        "eos": _token(settings, "eos_token", EOS_TOKEN),
        "pad": _token(settings, "pad_token", EOS_TOKEN),
        "unk": _token(settings, "unk_token", EOS_TOKEN),
    }
    try:
        tokenizer = build_clip_tokenizer(vocab_path, merges_path, names["unk"])
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ModelLoadError(f"cannot build the CLIP tokenizer from {directory}: {exc}") from exc
    found = {role: tokenizer.token_to_id(token) for role, token in names.items()}
    ids = {role: token_id for role, token_id in found.items() if token_id is not None}
    missing = [f"{role} {names[role]!r}" for role in found if role not in ids]
    if missing:
        raise ModelLoadError(f"{vocab_path} lacks the special tokens {', '.join(missing)}")
    tokenizer.add_special_tokens([names["bos"], names["eos"]])
    configured = settings.get("model_max_length")
    if max_length is None:
        sane = isinstance(configured, int) and 2 < configured <= _MAX_SANE_LENGTH
        max_length = configured if sane else DEFAULT_MAX_LENGTH
    assert isinstance(max_length, int)
    return ClipTokenizer(tokenizer, ids["bos"], ids["eos"], ids["pad"], max_length)
