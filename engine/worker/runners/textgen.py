# Text generation with decoder-only language models exported to ONNX.
#
# Rules of this module:
# - A model directory is what Hugging Face Optimum exports, loaded unchanged:
#   model.onnx (or decoder_model_merged.onnx / decoder_model.onnx), tokenizer.json,
#   and optionally config.json, generation_config.json, tokenizer_config.json and
#   chat_template.jinja. The ONNX inputs are input_ids and attention_mask
#   (int64 [batch, seq]), optionally position_ids and
#   past_key_values.{i}.key/.value ([batch, kv_heads, past_seq, head_dim]), and for
#   merged exports use_cache_branch; the outputs are logits [batch, seq, vocab] and
#   present.{i}.key/.value. Any other required input is a load error.
# - Whether the model has a KV cache is read from its input names. With a cache,
#   the first step feeds the whole prompt with an empty past (past_seq = 0) and
#   every later step feeds one token plus the presents of the step before;
#   without one, every step feeds the whole sequence. Both give the same tokens.
# - KV heads and head_dim come from the past inputs' static shapes, else from
#   config.json (num_key_value_heads or num_attention_heads; head_dim or
#   hidden_size // num_attention_heads).
# - EOS ids: those of generation_config.json, else config.json (`eos_token_id`,
#   an int or a list), always joined by the tokenizer's *special* tokens among
#   the well-known end markers (_EOS_TOKENS: </s>, <|endoftext|>, <|im_end|>,
#   <|eot_id|>, ...), so an instruct model stops at its end-of-turn token too.
# - Chat template (HF convention): chat_template.jinja, else tokenizer_config.json
#   "chat_template" (a string, or a list of {name, template} where "default" is
#   used). It is compiled once at load in jinja2's immutable sandbox with HF's
#   settings (trim_blocks, lstrip_blocks, raise_exception, strftime_now) and
#   rendered with messages=[{"role": "user", "content": prompt}], add_generation_prompt=True
#   and the tokenizer_config's bos_token/eos_token; the rendered text is encoded
#   without adding special tokens (the template places them). Param `chat`
#   (bool, default: true when the model has a template) turns it off for raw
#   completion; chat=true on a model without a template is an InvalidTaskInput.
# - Params: max_tokens (default 64, >= 1), temperature (default 0.7, 0..2; 0 means
#   greedy argmax), top_p (default 0.9, nucleus sampling, 0 < top_p <= 1), seed
#   (int; the same seed gives the same text; absent means fresh OS entropy),
#   chat (bool, see above). Generation stops at max_tokens ("length"), at EOS
#   ("stop"), at the context limit max_position_embeddings ("length"), or when
#   should_stop() ("cancelled").
# - Streaming: after each token the whole generated sequence is decoded and the
#   new suffix goes to on_progress({"tokens": [piece], "index": n}). A suffix is
#   held back while the text ends in an incomplete UTF-8 sequence (U+FFFD) or no
#   longer extends what was sent, so the pieces concatenate to the final output.
# - Proof: every result carries RunResult.proof (verify_text.TextProof): the
#   generated ids, the finish reason, the sampler's seed (drawn here from OS
#   entropy when the task gave none) and top-k logit commitments every
#   COMMIT_EVERY tokens. `verify` checks another node's claimed text by teacher
#   forcing: one parallel prefill of prompt + claimed ids (`teacher_forced`, in
#   PREFILL_CHUNK-token passes with the KV cache), then verify_text.judge_text.
#   Without a proof the text is re-tokenized (its ids may differ from what was
#   generated; nothing is replayed or compared beyond the tokens).
#
# Theory of operation: `load` builds one InferenceSession (providers from
# providers.choose_providers) and reads the directory's metadata into immutable
# values; `run` keeps all per-task state (token ids, KV arrays, the sampling RNG)
# in local variables, so concurrent runs on one runner are safe.
from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from engine.core.kinds import TASK_KINDS, TEXT_GENERATION
from engine.worker.runners.base import (
    FinishReason,
    InvalidTaskInput,
    ModelLoadError,
    read_json_object,
    ProgressCallback,
    RunResult,
    StopCheck,
    Verdict,
)
from engine.worker.runners.chat_template import ChatTemplate
from engine.worker.runners.providers import choose_providers, open_session
from engine.worker.runners.verify_text import (
    GREEDY_BELOW,
    CommitmentRecorder,
    TextProof,
    judge_text,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "ChatTemplate",
    "KvLayout",
    "Sampling",
    "TextGenRunner",
    "pick_token",
]

# The generation defaults are the text-generation task kind's (one place for them).
_TEXT = TASK_KINDS[TEXT_GENERATION]
DEFAULT_MAX_TOKENS = int(_TEXT.size_default("output_tokens"))
DEFAULT_TEMPERATURE = float(_TEXT.default("temperature") or 0.0)
DEFAULT_TOP_P = float(_TEXT.default("top_p") or 1.0)
MODEL_FILES = ("model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx")
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
PREFILL_CHUNK = 256  # tokens per forward pass of a verification prefill (bounds its memory)
_KNOWN_INPUTS = {"input_ids", "attention_mask", "position_ids", "use_cache_branch"}
_EOS_TOKENS = ("</s>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<eos>", "<|end|>")
_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

log = logging.getLogger(__name__)


class InputSpec(Protocol):
    """What KvLayout reads from an onnxruntime NodeArg."""

    name: str
    shape: Sequence[int | str | None]
    type: str


@attrs.frozen
class KvLayout:
    """The past key/value inputs of a with-past model, in feed order."""

    names: tuple[str, ...]
    num_kv_heads: int
    head_dim: int
    dtype: type[np.floating[Any]]

    @classmethod
    def from_inputs(cls, inputs: Sequence[InputSpec], config: Mapping[str, Any]) -> KvLayout | None:
        """The layout, or None when the model takes no past inputs."""
        past = [spec for spec in inputs if spec.name.startswith(PAST_PREFIX)]
        if not past:
            return None
        shape = list(past[0].shape)
        if len(shape) != 4:
            raise ModelLoadError(f"{past[0].name} has shape {shape}; expected [batch, heads, past_seq, head_dim]")
        heads = config.get("num_attention_heads")
        num_kv_heads = shape[1] if isinstance(shape[1], int) else config.get("num_key_value_heads", heads)
        head_dim = shape[3] if isinstance(shape[3], int) else config.get("head_dim")
        if not isinstance(head_dim, int) and isinstance(heads, int) and isinstance(config.get("hidden_size"), int):
            head_dim = config["hidden_size"] // heads
        if not isinstance(num_kv_heads, int) or not isinstance(head_dim, int):
            raise ModelLoadError(
                f"{past[0].name} has symbolic dims {shape}; config.json must give num_key_value_heads "
                "(or num_attention_heads) and head_dim (or hidden_size)"
            )
        dtype = _DTYPES.get(past[0].type)
        if dtype is None:
            raise ModelLoadError(f"{past[0].name} has unsupported type {past[0].type}")
        return cls(tuple(spec.name for spec in past), num_kv_heads, head_dim, dtype)

    def empty(self) -> dict[str, np.ndarray]:
        """The past of the first step: past_seq = 0 for every layer."""
        return {name: np.zeros((1, self.num_kv_heads, 0, self.head_dim), self.dtype) for name in self.names}


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidTaskInput(f"{name} must be an integer, got {value!r}")
    return int(value)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidTaskInput(f"{name} must be a finite number, got {value!r}")
    return float(value)


@attrs.frozen
class Sampling:
    """Validated generation params."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Sampling:
        """Read max_tokens, temperature, top_p and seed; None means the default."""
        get = {key: value for key, value in params.items() if value is not None}.get
        sampling = cls(
            max_tokens=_integer(get("max_tokens", DEFAULT_MAX_TOKENS), "max_tokens"),
            temperature=_number(get("temperature", DEFAULT_TEMPERATURE), "temperature"),
            top_p=_number(get("top_p", DEFAULT_TOP_P), "top_p"),
            seed=_integer(get("seed"), "seed") if get("seed") is not None else None,
        )
        if sampling.max_tokens < 1:
            raise InvalidTaskInput(f"max_tokens must be >= 1, got {sampling.max_tokens}")
        if not 0 <= sampling.temperature <= 2:
            raise InvalidTaskInput(f"temperature must be in [0, 2], got {sampling.temperature}")
        if not 0 < sampling.top_p <= 1:
            raise InvalidTaskInput(f"top_p must be in (0, 1], got {sampling.top_p}")
        return sampling



def pick_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy argmax when temperature is (nearly) 0, else temperature + nucleus (top-p)
    sampling, in float64. Never NaN: the logits are shifted so that their maximum is
    0 before they are divided (so no quotient overflows), NaN logits count as
    impossible, and a distribution that still cannot be sampled falls back to greedy."""
    values = np.nan_to_num(logits.astype(np.float64), nan=-np.inf, posinf=np.finfo(np.float64).max)
    if not temperature >= GREEDY_BELOW or not np.isfinite(values.max()):
        return int(np.argmax(values))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        probs = np.exp((values - values.max()) / temperature)
    total = probs.sum()
    if not (np.isfinite(total) and total > 0):
        return int(np.argmax(values))
    probs /= total
    order = np.argsort(-probs, kind="stable")
    keep = min(int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1, len(order))
    kept = order[:keep]
    return int(kept[rng.choice(keep, p=probs[kept] / probs[kept].sum())])


@attrs.define
class _Detokenizer:
    """Turns a growing token sequence into streamed text pieces (see module rules)."""

    tokenizer: Tokenizer
    ids: list[int] = attrs.Factory(list)
    sent: str = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)



def _eos_ids(generation: Mapping[str, Any], config: Mapping[str, Any], tokenizer: Tokenizer) -> frozenset[int]:
    configured: frozenset[int] = frozenset()
    for source in (generation, config):
        eos = source.get("eos_token_id")
        if isinstance(eos, int):
            configured = frozenset([eos])
        elif isinstance(eos, list) and eos:
            configured = frozenset(int(token) for token in eos)
        if configured:
            break
    special = {added.content: index for index, added in tokenizer.get_added_tokens_decoder().items() if added.special}
    return configured | {special[token] for token in _EOS_TOKENS if token in special}


@attrs.define
class TextGenRunner:
    """Runs one decoder-only ONNX model; see the module comment for the contract."""

    model_name: str
    model_dir: Path
    providers_preference: str | None = None
    _session: ort.InferenceSession | None = attrs.field(default=None, init=False)
    _tokenizer: Tokenizer | None = attrs.field(default=None, init=False)
    _kv: KvLayout | None = attrs.field(default=None, init=False)
    _inputs: frozenset[str] = attrs.field(default=frozenset(), init=False)
    _eos: frozenset[int] = attrs.field(default=frozenset(), init=False)
    _max_positions: int | None = attrs.field(default=None, init=False)
    _chat: ChatTemplate | None = attrs.field(default=None, init=False)

    def load(self) -> None:
        where = f"model {self.model_name!r} ({self.model_dir})"
        if not self.model_dir.is_dir():
            raise ModelLoadError(f"{where}: model directory does not exist")
        model_path = next((self.model_dir / name for name in MODEL_FILES if (self.model_dir / name).is_file()), None)
        if model_path is None:
            raise ModelLoadError(f"{where}: no model file; expected one of {', '.join(MODEL_FILES)}")
        tokenizer_path = self.model_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise ModelLoadError(f"{where}: missing tokenizer file {tokenizer_path}")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{where}: cannot load {tokenizer_path}: {exc}") from exc
        config = read_json_object(self.model_dir / "config.json")
        generation = read_json_object(self.model_dir / "generation_config.json")
        chat = ChatTemplate.load(self.model_dir, read_json_object(self.model_dir / "tokenizer_config.json"))
        session = open_session(model_path, choose_providers(self.providers_preference))
        specs = session.get_inputs()
        names = [spec.name for spec in specs]
        unknown = [name for name in names if name not in _KNOWN_INPUTS and not name.startswith(PAST_PREFIX)]
        if unknown or not {"input_ids", "attention_mask"} <= set(names):
            raise ModelLoadError(
                f"{where}: {model_path.name} inputs {names} are not a decoder-only "
                "export (need input_ids, attention_mask; optional position_ids, past_key_values.*)"
            )
        kv = KvLayout.from_inputs(specs, config)
        outputs = {spec.name for spec in session.get_outputs()}
        missing = [name for name in self._output_names(kv) if name not in outputs]
        if missing:
            raise ModelLoadError(f"{where}: {model_path.name} lacks outputs {missing}")
        max_positions = config.get("max_position_embeddings")
        self._session, self._tokenizer, self._kv = session, tokenizer, kv
        self._inputs = frozenset(names)
        self._eos = _eos_ids(generation, config, tokenizer)
        self._max_positions = max_positions if isinstance(max_positions, int) else None
        self._chat = chat
        log.info("loaded %s from %s (%s KV cache, %s chat template)", self.model_name, model_path,
                 "with" if kv else "without", "with" if chat else "without")

    def unload(self) -> None:
        self._session = self._tokenizer = self._kv = self._chat = None

    @property
    def has_chat_template(self) -> bool:
        return self._chat is not None

    def prompt_ids(self, prompt: str, params: Mapping[str, Any]) -> list[int]:
        """The prompt's token ids, through the chat template unless params say chat=false."""
        assert self._tokenizer is not None
        chat = params.get("chat")
        if chat is not None and not isinstance(chat, bool):
            raise InvalidTaskInput(f"chat must be true or false, got {chat!r}")
        if chat and self._chat is None:
            raise InvalidTaskInput(f"chat is true but model {self.model_name!r} has no chat template")
        if self._chat is not None and chat is not False:
            return list(self._tokenizer.encode(self._chat.render(prompt), add_special_tokens=False).ids)
        return list(self._tokenizer.encode(prompt).ids)

    @staticmethod
    def _output_names(kv: KvLayout | None) -> list[str]:
        presents = [PRESENT_PREFIX + name.removeprefix(PAST_PREFIX) for name in (kv.names if kv else ())]
        return ["logits", *presents]

    def _forward(
        self, ids: Sequence[int], offset: int, past: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits after the last of `ids` (at positions offset..), and the new past."""
        logits, new_past = self._forward_all(ids, offset, past)
        return logits[-1].astype(np.float32), new_past

    def _forward_all(
        self, ids: Sequence[int], offset: int, past: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [len(ids), vocab] at every position of `ids` (offset..), and the new past."""
        assert self._session is not None
        total = offset + len(ids)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], np.int64),
            "attention_mask": np.ones((1, total), np.int64),
            **past,
        }
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(offset, total, dtype=np.int64)[None]
        if "use_cache_branch" in self._inputs:
            feeds["use_cache_branch"] = np.asarray([offset > 0])
        logits, *presents = self._session.run(self._output_names(self._kv), feeds)
        new_past = dict(zip(self._kv.names, presents)) if self._kv else {}
        return logits[0], new_past

    def run(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> RunResult:
        start = time.perf_counter()
        if self._session is None or self._tokenizer is None:
            raise ModelLoadError(f"model {self.model_name!r} is not loaded")
        sampling, prompt_ids = self._task_prompt(inputs, params)
        limit = self._max_positions or math.inf
        if len(prompt_ids) >= limit:
            raise InvalidTaskInput(f"the prompt is {len(prompt_ids)} tokens; this model's context is {limit}")

        # a seed drawn here when the task gave none (fresh OS entropy still), so the
        # proof can name it and a validator can replay the sampler
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        rng = np.random.default_rng(seed)
        recorder = CommitmentRecorder()
        detokenizer = _Detokenizer(self._tokenizer)
        finish: FinishReason = "length"
        pending, offset = list(prompt_ids), 0
        past = self._kv.empty() if self._kv else {}
        while len(detokenizer.ids) < sampling.max_tokens and offset + len(pending) < limit:
            if should_stop():
                finish = "cancelled"
                break
            logits, past = self._forward(pending, offset, past)
            recorder.observe(len(detokenizer.ids), logits)
            token = pick_token(logits, sampling.temperature, sampling.top_p, rng)
            if token in self._eos:
                finish = "stop"
                break
            piece = detokenizer.push(token)
            if piece:
                on_progress({"tokens": [piece], "index": len(detokenizer.ids) - 1})
            if self._kv:
                offset, pending = offset + len(pending), [token]
            else:
                pending = [*prompt_ids, *detokenizer.ids]
        output = detokenizer.text()
        if output.startswith(detokenizer.sent) and len(output) > len(detokenizer.sent):
            on_progress({"tokens": [output[len(detokenizer.sent) :]], "index": len(detokenizer.ids) - 1})
        usage = {
            "tokens": len(detokenizer.ids),
            "prompt_tokens": len(prompt_ids),
            "seconds": time.perf_counter() - start,
        }
        proof = TextProof(tuple(detokenizer.ids), finish, recorder.commitments(len(detokenizer.ids)), seed)
        return RunResult(output=output, usage=usage, finish_reason=finish, proof=proof.to_json())

    def _task_prompt(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[Sampling, list[int]]:
        """The validated sampling params and prompt ids of a task (InvalidTaskInput if bad)."""
        sampling = Sampling.from_params(params)
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidTaskInput(f"input.prompt must be a string, got {type(prompt).__name__}")
        prompt_ids = self.prompt_ids(prompt, params)
        if not prompt_ids:
            raise InvalidTaskInput("the prompt encodes to no tokens")
        return sampling, prompt_ids

    def teacher_forced(self, prompt_ids: Sequence[int], ids: Sequence[int],
                       should_stop: StopCheck) -> np.ndarray | None:
        """The logits that chose each of `ids` after `prompt_ids`, and after the last of
        them (len(ids) + 1 rows; len(ids) when that would pass the context limit): one
        parallel prefill, in PREFILL_CHUNK-token passes with the KV cache (the whole
        sequence at once without one). None when should_stop() said so."""
        sequence = [*prompt_ids, *ids]
        limit = self._max_positions or math.inf
        first = len(prompt_ids) - 1  # the position whose logits chose ids[0]
        rows: list[np.ndarray] = []
        past = self._kv.empty() if self._kv else {}
        chunk = PREFILL_CHUNK if self._kv else len(sequence)
        for start in range(0, len(sequence), chunk):
            if should_stop():
                return None
            logits, past = self._forward_all(sequence[start:start + chunk], start if self._kv else 0, past)
            keep = max(0, first - start)
            rows.extend(logits[keep:].astype(np.float32))
        if len(sequence) > limit:
            rows = rows[:len(ids)]
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def verify(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        claimed: Any,
        proof: Mapping[str, Any] | None,
        should_stop: StopCheck,
    ) -> Verdict:
        """Teacher-forced check of a claimed output (verify_text.py has the rules)."""
        if self._session is None or self._tokenizer is None:
            raise ModelLoadError(f"model {self.model_name!r} is not loaded")
        sampling, prompt_ids = self._task_prompt(inputs, params)
        if not isinstance(claimed, str):
            return Verdict(False, 0.0, f"the claimed output is a {type(claimed).__name__}, not text")
        parsed: TextProof | None = None
        if proof is not None:
            try:
                parsed = TextProof.from_json(proof)
            except ValueError as exc:
                return Verdict(False, 0.0, f"malformed proof: {exc}")
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if parsed is None:  # re-tokenized: may differ from the generated ids
            ids = list(self._tokenizer.encode(claimed, add_special_tokens=False).ids)
            how = "no proof: the text re-tokenized; "
        else:
            ids, how = list(parsed.token_ids), ""
            if any(token >= vocab for token in ids):
                return Verdict(False, 0.0, f"proof.token_ids hold ids outside the vocabulary ({vocab})")
            decoded = self._tokenizer.decode(ids, skip_special_tokens=True)
            if decoded != claimed:
                return Verdict(False, 0.0, "proof.token_ids do not decode to the claimed text")
        if len(ids) > sampling.max_tokens:
            return Verdict(False, 0.0, f"{len(ids)} tokens claimed; max_tokens is {sampling.max_tokens}")
        limit = self._max_positions or math.inf
        if len(prompt_ids) + len(ids) > limit:
            return Verdict(False, 0.0, f"prompt + output is {len(prompt_ids) + len(ids)} tokens; "
                                       f"the model's context is {limit}")
        rows = self.teacher_forced(prompt_ids, ids, should_stop)
        if rows is None:
            return Verdict(False, 0.0, "cancelled")
        verdict = judge_text(rows, ids, self._eos, sampling.temperature, sampling.top_p, sampling.max_tokens,
                             parsed.finish_reason if parsed else None, len(prompt_ids) + len(ids) >= limit,
                             parsed.commitments if parsed else None,
                             sampling.seed if sampling.seed is not None else parsed.seed if parsed else None)
        return attrs.evolve(verdict, detail=how + verdict.detail)
