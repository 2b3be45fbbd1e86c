# A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) rebuilt from the
# tokenizer metadata that llama.cpp stores inside a GGUF file.
#
# Rules:
# - Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`, the GPT-2 /
#   StarCoder / SmolLM / Llama-3 family) are supported; anything else (SentencePiece
#   "llama", WordPiece "bert", ...) is a GGUFError naming the field. GGUF stores
#   those tokens and merges already in byte-level form ("Ġthe"), exactly as the
#   HF vocabulary and merges list do, so they are copied as they are.
# - The pre-tokenizer comes from `tokenizer.ggml.pre` through PRE_TOKENIZERS
#   (data): llama.cpp's name -> whether digits are split one by one before the
#   GPT-2 byte-level regex. A name outside the table is an error, not a guess.
# - Token types (llama.cpp's enum): CONTROL (3) tokens become special added
#   tokens (skipped when decoding), USER_DEFINED (4) tokens plain added tokens.
# - BOS is prepended by the post-processor only when `tokenizer.ggml.add_bos_token`
#   is true. The chat template (`tokenizer.chat_template`) goes into
#   tokenizer_config.json under "chat_template", the HF convention, with the
#   bos/eos/pad/unk token strings the template may refer to.
# - Output is deterministic (the tokenizers library serialises the vocabulary in
#   id order; the config is sorted JSON).
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "CONTROL",
    "PRE_TOKENIZERS",
    "USER_DEFINED",
    "GGUFError",
    "GGUFTokenizer",
    "dump_json",
]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp pre-tokenizer name -> split digits individually before the GPT-2 regex.
PRE_TOKENIZERS: dict[str, bool] = {
    "default": False,
    "gpt2": False,
    "gpt-2": False,
    "mpt": False,
    "olmo": False,
    "jais": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
    "codeshell": True,
}


class GGUFError(ValueError):
    """The GGUF file lacks a field the converter needs, or has an unsupported value."""


@attrs.frozen
class GGUFTokenizer:
    """The tokenizer metadata of one GGUF file."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    split_digits: bool
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_id: int | None
    add_bos: bool
    chat_template: str | None
    context_length: int

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], context_length: int) -> GGUFTokenizer:
        """Read from GGUF key/value metadata (already decoded to Python values)."""
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise GGUFError(f"tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
        pre = str(fields.get("tokenizer.ggml.pre", "default"))
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"tokenizer.ggml.pre {pre!r} is not supported (known: {', '.join(sorted(PRE_TOKENIZERS))})")
        tokens = tuple(str(t) for t in _required(fields, "tokenizer.ggml.tokens"))
        types = tuple(int(t) for t in fields.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
        merges = tuple(str(m) for m in _required(fields, "tokenizer.ggml.merges"))
        if len(types) != len(tokens):
            raise GGUFError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
        template = fields.get("tokenizer.chat_template")

        def token_id(key: str) -> int | None:
            value = fields.get(key)
            if value is None:
                return None
            if not 0 <= int(value) < len(tokens):
                raise GGUFError(f"{key} = {value} is outside the vocabulary of {len(tokens)} tokens")
            return int(value)

        return cls(
            tokens=tokens,
            token_types=types,
            merges=merges,
            split_digits=PRE_TOKENIZERS[pre],
            bos_id=token_id("tokenizer.ggml.bos_token_id"),
            eos_id=token_id("tokenizer.ggml.eos_token_id"),
            unk_id=token_id("tokenizer.ggml.unknown_token_id"),
            pad_id=token_id("tokenizer.ggml.padding_token_id"),
            eot_id=token_id("tokenizer.ggml.eot_token_id"),
            add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=str(template) if template is not None else None,
            context_length=context_length,
        )

    def _name(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokens[token_id]

    def end_ids(self) -> list[int]:
        """The ids that end a generation: EOS, then EOT when it differs."""
        return list(dict.fromkeys(i for i in (self.eos_id, self.eot_id) if i is not None))

    def tokenizer_json(self) -> str:
        """tokenizer.json text, loadable by `tokenizers.Tokenizer.from_str`."""
        from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE

        vocab = {token: index for index, token in enumerate(self.tokens)}
        if len(vocab) != len(self.tokens):
            raise GGUFError("tokenizer.ggml.tokens holds duplicate tokens")
        merges = []
        for merge in self.merges:
            left, sep, right = merge.partition(" ")
            if not sep:
                raise GGUFError(f"tokenizer.ggml.merges entry {merge!r} is not 'left right'")
            merges.append((left, right))
        unk = self._name(self.unk_id) if self.unk_id is not None and self.token_types[self.unk_id] != NORMAL else None
        tokenizer = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=False, byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tokenizer.pre_tokenizer = (
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
            if self.split_digits else byte_level
        )
        tokenizer.decoder = decoders.ByteLevel()
        if self.add_bos and self.bos_id is not None:
            bos = self.tokens[self.bos_id]
            tokenizer.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                              special_tokens=[(bos, self.bos_id)]),
            ])
        else:
            tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        added = [
            AddedToken(token, special=kind == CONTROL, normalized=False)
            for token, kind in zip(self.tokens, self.token_types)
            if kind in (CONTROL, USER_DEFINED)
        ]
        tokenizer.add_tokens(added)
        return tokenizer.to_str(pretty=True)

    def tokenizer_config(self) -> dict[str, Any]:
        """tokenizer_config.json content (HF convention), chat template included."""
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.context_length,
            "bos_token": self._name(self.bos_id),
            "eos_token": self._name(self.eos_id),
            "unk_token": self._name(self.unk_id),
            "pad_token": self._name(self.pad_id),
            "additional_special_tokens": [
                token for token, kind in zip(self.tokens, self.token_types) if kind == CONTROL
            ],
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config


def _required(fields: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = fields.get(key)
    if not value:
        raise GGUFError(f"the GGUF file has no {key}")
    return value  # type: ignore[no-any-return]


def dump_json(value: object) -> str:
    """Sorted, indented JSON with a final newline (the pack's one JSON style)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
