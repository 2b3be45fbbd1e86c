# Whisper's special tokens, read from a tokenizer.
#
# Rules of this module:
# - Multilingual or English-only is told by the id of <|startoftranscript|>:
#   50258 in multilingual vocabularies, 50257 in English-only ones (their
#   vocabularies lack the <|en|>-before-<|startoftranscript|> shift). The vocabulary
#   size says nothing reliable (tokenizer files may lack the timestamp tokens).
# - Language tokens are the added tokens strictly between <|startoftranscript|> and
#   <|translate|>, named <|code|>; the code is the language's name in task params.
# - Timestamp tokens are every id above <|notimestamps|>; decoding without
#   timestamps never emits them.
# - A tokenizer without these tokens is not a Whisper tokenizer: ModelLoadError.
from __future__ import annotations

from collections.abc import Mapping

import attrs
from tokenizers import Tokenizer

from engine.worker.runners.base import ModelLoadError

__all__ = ["ENGLISH_ONLY_SOT", "MULTILINGUAL_SOT", "WhisperTokens"]

ENGLISH_ONLY_SOT, MULTILINGUAL_SOT = 50257, 50258


@attrs.frozen
class WhisperTokens:
    """Ids of the special tokens of one Whisper tokenizer."""

    sot: int  # <|startoftranscript|>
    eot: int  # <|endoftext|>
    transcribe: int
    translate: int
    no_timestamps: int
    sot_prev: int  # <|startofprev|>, which introduces a prompt
    languages: Mapping[str, int]  # "en" -> id of <|en|>
    no_speech: int | None = None  # <|nocaptions|> (<|nospeech|> in newer vocabularies)

    @property
    def multilingual(self) -> bool:
        return self.sot == MULTILINGUAL_SOT

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> WhisperTokens:
        def need(token: str) -> int:
            found = tokenizer.token_to_id(token)
            if found is None:
                raise ModelLoadError(f"the tokenizer has no {token} token; it is not a Whisper tokenizer")
            return int(found)

        sot, translate = need("<|startoftranscript|>"), need("<|translate|>")
        languages = {}
        for token_id in range(sot + 1, translate):
            token = tokenizer.id_to_token(token_id)
            if token and token.startswith("<|") and token.endswith("|>"):
                languages[token[2:-2]] = token_id
        no_speech = tokenizer.token_to_id("<|nocaptions|>")
        if no_speech is None:
            no_speech = tokenizer.token_to_id("<|nospeech|>")
        return cls(sot=sot, eot=need("<|endoftext|>"), transcribe=need("<|transcribe|>"), translate=translate,
                   no_timestamps=need("<|notimestamps|>"), sot_prev=need("<|startofprev|>"), languages=languages,
                   no_speech=no_speech)
