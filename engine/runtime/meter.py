# The coordinator's meter: the tokens of a text result, counted by the coordinator
# with the model's own tokenizer, so that what a task is billed and shown by never
# rests on the node's word (engine.core.metering.metered_usage does the rest).
#
# Which tokenizer: a node announces, in its hello, the weights that serve each model
# (Hello.weights, in words: "SmolLM2-135M-Instruct (real trained weights, ...)").
# TOKENIZERS maps those words to where the coordinator finds the same tokenizer:
# the packs this project builds (engine.worker.packs.defaults.DEFAULTS: the
# tokenizer.json of the pack in the local cache, when it has been built there) and
# the demo pack (its tokenizer is generated, no file needed). Weights the table
# does not know (an operator's own export), or a pack this machine has not built,
# have no tokenizer here: the node's counts are then only bounded (metering.py)
# and the task says so (metered_by "node, bounded").
#
# A tokenizer is loaded once, on the first result that needs it, and kept (so is
# its absence: a pack built here later is used after a restart); words that no
# source knows are never cached (a node may announce any). A count is one encode
# of the result's text (well under a millisecond for a thousand tokens) on the
# actor. The weights a node names are its claim: a node
# that names weights it does not run is a substitution, which verification (not
# metering) catches; the count is still of the text it sent.
#
# Rules: a source is a function of no arguments returning tokenizer.json text or
# None (not available here); sources never download. Only `tokenizers` is needed.
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from tokenizers import Tokenizer

from engine.core import MODELS
from engine.core.metering import Counts

log = logging.getLogger(__name__)

TokenizerSource = Callable[[], "str | None"]
# the models whose results are metered in tokens (their kind is priced by them)
TEXT_MODELS = frozenset(name for name, m in MODELS.items() if "tokens" in m.kind.usage_fields)


def _pack_file(directory: Callable[[], Path]) -> TokenizerSource:
    def source() -> str | None:
        path = directory() / "tokenizer.json"
        return path.read_text(encoding="utf-8") if path.is_file() else None

    return source


def _demo_tokenizer() -> str | None:
    from engine.worker.runners.demo_pack import build_tokenizer

    return build_tokenizer()


def default_tokenizers() -> dict[str, TokenizerSource]:
    """Announced weights (in words) -> where this machine finds their tokenizer."""
    from engine.worker.packs.defaults import DEFAULTS, DEMO_WEIGHTS

    table: dict[str, TokenizerSource] = {
        entry.weights: _pack_file(entry.directory) for entry in DEFAULTS
        if entry.model in TEXT_MODELS}
    table[DEMO_WEIGHTS] = _demo_tokenizer
    return table




class Meter:
    """Counts of text results by announced weights (see the top comment)."""

    def __init__(self, sources: Mapping[str, TokenizerSource] | None = None) -> None:
        self.sources = dict(default_tokenizers() if sources is None else sources)
        self._loaded: dict[str, Tokenizer | None] = {}

    def tokenizer(self, weights: str) -> Tokenizer | None:
        """The tokenizer of these weights, or None when the coordinator has none."""
        source = self.sources.get(weights)
        if source is None:  # not cached: the words are the node's, of any number
            return None
        if weights in self._loaded:
            return self._loaded[weights]
        tokenizer = None
        try:
            text = source()
            tokenizer = Tokenizer.from_str(text) if text is not None else None
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            log.warning("no tokenizer for %r: %s", weights, exc)
        if tokenizer is None:
            log.info("no tokenizer here for the weights %r: their token counts are the "
                     "node's, bounded", weights)
        self._loaded[weights] = tokenizer  # at most one entry per source
        return tokenizer

    def count(self, model: str, weights: str, output: Any,
              payload: Mapping[str, Any]) -> Counts | None:
        """The coordinator's own counts of a text result, or None when it cannot
        count (not a text model, no tokenizer for the weights, output not text)."""
        if model not in TEXT_MODELS or not isinstance(output, str):
            return None
        tokenizer = self.tokenizer(weights)
        if tokenizer is None:
            return None
        prompt = payload.get("prompt")
        prompt_tokens = (len(tokenizer.encode(prompt, add_special_tokens=False).ids)
                         if isinstance(prompt, str) else 0)
        return Counts(len(tokenizer.encode(output, add_special_tokens=False).ids),
                      prompt_tokens)


__all__ = ["Meter", "TEXT_MODELS", "TokenizerSource", "default_tokenizers"]
