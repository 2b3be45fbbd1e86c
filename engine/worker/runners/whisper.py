# Speech to text with Whisper exported to ONNX (the Hugging Face Optimum layout).
#
# Rules of this module:
# - A model directory is what `optimum-cli export onnx --task
#   automatic-speech-recognition-with-past` writes, loaded unchanged (and what
#   packs.whisper_ct2 builds): encoder_model.onnx, then either
#   decoder_model_merged.onnx (with use_cache_branch) or decoder_model.onnx plus
#   decoder_with_past_model.onnx (or decoder_model.onnx alone: no cache, every
#   step feeds the whole sequence); tokenizer.json; optionally config.json,
#   generation_config.json and preprocessor_config.json.
# - Inputs: "audio", a base64 WAV/FLAC/MP3/OGG file (audio.py decodes it);
#   "prompt", an optional initial prompt (text before <|startofprev|>, as in
#   Whisper's `initial_prompt`). Params: language (a code such as "en"; absent on a
#   multilingual model: detected from the first window), task ("transcribe" or
#   "translate"; English-only models transcribe English only), max_tokens (cap on
#   generated tokens over the whole file, >= 1).
# - Decoding: log-mel features (mel.py) of consecutive 30 s windows; per window
#   the encoder runs once, then greedy decoding with the KV cache from
#   [<|startofprev|> prompt] <|startoftranscript|> [<|lang|> <|task|>]
#   <|notimestamps|>, at most text_context // 2 tokens per window. Suppressed
#   always: the config's suppress_tokens (CTranslate2 `suppress_ids`), the
#   timestamp tokens and ids the tokenizer cannot decode; at the first token also
#   begin_suppress_tokens (`suppress_ids_begin`). A window ends at <|endoftext|>.
#   Each later window's prompt is the text decoded so far (Whisper's
#   condition_on_previous_text), truncated to the last text_context // 2 - 1 ids.
#   A window reaching its token limit (a repetition loop, usually) ends and the
#   next one starts; only max_tokens ends the task early.
# - Silence: Whisper's rule. When P(<|nocaptions|>) at <|startoftranscript|>
#   exceeds 0.6, the window's tokens are held back (not streamed) until it ends;
#   if their mean log-probability (EOT included) is below -1 the window is
#   dropped as silence, else its text is streamed then.
# - Results: output is the transcript text (leading spaces dropped); usage has audio_seconds
#   (measured from the decoded file), tokens (generated), prompt_tokens (of the
#   initial prompt) and seconds (wall time). finish_reason is "length" when
#   max_tokens cut the transcript, "cancelled" when should_stop() said so (checked
#   before every decoder step), else "stop".
# - Verification (`verify`): the task is re-run here and the claimed transcript
#   compared by word error rate (verify_media.judge_transcript); no proof is used.
# - Streaming as the text runner does: on_progress({"tokens": [piece], "index": n})
#   with pieces that concatenate to the output.
#
# Theory of operation: `load` opens the sessions (providers.choose_providers) and
# reads the metadata into immutable values (WhisperTokens, MelSpec, suppression
# masks). `run` keeps all per-task state in locals, so concurrent runs are safe.
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from engine.worker.runners.audio import load_audio
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
from engine.worker.runners.mel import MelSpec, log_mel_spectrogram, windows
from engine.worker.runners.providers import choose_providers, open_session
from engine.worker.runners.verify_media import judge_transcript
from engine.worker.runners.whisper_tokens import WhisperTokens

__all__ = ["TASKS", "Transcription", "WhisperRunner"]

TASKS = ("transcribe", "translate")
NO_SPEECH_THRESHOLD = 0.6  # Whisper's defaults: a window is silence when P(<|nocaptions|>) at
LOGPROB_THRESHOLD = -1.0  # <|startoftranscript|> exceeds 0.6 and the mean token log-prob is below -1
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
_KNOWN_INPUTS = frozenset({"input_ids", "encoder_hidden_states", "use_cache_branch"})
_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}



@attrs.frozen
class Transcription:
    """Validated inputs and params of one task."""

    language: str | None
    task: str
    max_tokens: int | None
    prompt: str | None

    @classmethod
    def from_task(cls, inputs: Mapping[str, Any], params: Mapping[str, Any], tokens: WhisperTokens) -> Transcription:
        language = params.get("language")
        if language is not None:
            if not isinstance(language, str) or language.strip().lower() not in tokens.languages:
                raise InvalidTaskInput(f"language must be a language code such as 'en' "
                                       f"(one of {len(tokens.languages)} known), got {language!r}")
            language = language.strip().lower()
            if not tokens.multilingual and language != "en":
                raise InvalidTaskInput(f"language {language!r}: this model is English-only")
        task = params.get("task", "transcribe")
        if task not in TASKS:
            raise InvalidTaskInput(f"task must be one of {TASKS}, got {task!r}")
        if task == "translate" and not tokens.multilingual:
            raise InvalidTaskInput("task 'translate' needs a multilingual model; this one is English-only")
        max_tokens = params.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise InvalidTaskInput(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        prompt = inputs.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidTaskInput(f"prompt must be a string, got {type(prompt).__name__}")
        return cls(language, task, max_tokens, prompt.strip() or None if prompt else None)


@attrs.frozen
class _Session:
    """A decoder session with its input names and the outputs a step fetches."""

    session: ort.InferenceSession
    inputs: frozenset[str]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, session: ort.InferenceSession, cached: bool) -> _Session:
        # With a cache the encoder keys/values never change after the first step, so
        # later steps do not fetch them (a copy of every layer's 1500-position K/V).
        outputs = tuple(spec.name for spec in session.get_outputs()
                        if not (cached and spec.name.startswith(PRESENT_PREFIX) and ".encoder." in spec.name))
        return cls(session, frozenset(spec.name for spec in session.get_inputs()), outputs)


@attrs.frozen
class _Decoder:
    """One or two decoder sessions and how to feed them."""

    first: _Session  # the step with no past (or every step, without a cache)
    later: _Session | None  # with past; None when the model has no cache
    past_names: tuple[str, ...]
    heads: int
    head_dim: int
    dtype: type[np.floating[Any]]

    def step(self, ids: Sequence[int], encoded: np.ndarray,
             past: dict[str, np.ndarray] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [seq, vocab] of the fed positions and the new past (empty when there is no cache)."""
        cached = past is not None and self.later is not None
        step = self.later if cached and self.later is not None else self.first
        feeds: dict[str, np.ndarray] = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "encoder_hidden_states" in step.inputs:
            feeds["encoder_hidden_states"] = encoded
        if "use_cache_branch" in step.inputs:
            feeds["use_cache_branch"] = np.array([cached])
        for name in self.past_names:
            if name in step.inputs:
                feeds[name] = past[name] if cached and past is not None else \
                    np.zeros((1, self.heads, 0, self.head_dim), self.dtype)
        result = dict(zip(step.outputs, step.session.run(list(step.outputs), feeds)))
        new_past = dict(past or {}) if cached else {}
        for name, value in result.items():
            if name.startswith(PRESENT_PREFIX):
                new_past[PAST_PREFIX + name[len(PRESENT_PREFIX):]] = value
        return result["logits"][0].astype(np.float32), new_past


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x))
    return top + float(np.log(np.sum(np.exp(x - top))))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    probabilities: np.ndarray = e / e.sum()
    return probabilities


@attrs.frozen
class _Window:
    """What decoding one 30 s window gave."""

    ids: list[int]
    finish: FinishReason
    held: bool  # not streamed yet: the no-speech probability was high
    silent: bool  # held, and the tokens were unlikely: the window is dropped as silence


@attrs.define
class _Stream:
    """Streamed text pieces of a growing id sequence; leading spaces are dropped."""

    tokenizer: Tokenizer
    ids: list[int] = attrs.Factory(list)
    sent: str = ""

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


@attrs.define
class WhisperRunner:
    """Runs one Whisper ONNX export; see the module comment for the contract."""

    model_name: str
    model_dir: Path
    providers_preference: str | None = None
    _encoder: ort.InferenceSession | None = attrs.field(default=None, init=False)
    _decoder: _Decoder | None = attrs.field(default=None, init=False)
    _tokenizer: Tokenizer | None = attrs.field(default=None, init=False)
    _tokens: WhisperTokens | None = attrs.field(default=None, init=False)
    _mel: MelSpec | None = attrs.field(default=None, init=False)
    _suppress: np.ndarray | None = attrs.field(default=None, init=False)  # bool [vocab]
    _suppress_begin: np.ndarray | None = attrs.field(default=None, init=False)
    _text_context: int = attrs.field(default=448, init=False)
    _feature_dtype: type[np.floating[Any]] = attrs.field(default=np.float32, init=False)

    @property
    def tokens(self) -> WhisperTokens:
        if self._tokens is None:
            raise ModelLoadError(f"model {self.model_name!r} is not loaded")
        return self._tokens

    def load(self) -> None:
        where = f"model {self.model_name!r} ({self.model_dir})"
        directory = Path(self.model_dir)
        if not (directory / "encoder_model.onnx").is_file():
            raise ModelLoadError(f"{where}: no encoder_model.onnx (a Whisper ONNX export directory is expected)")
        if not (directory / "tokenizer.json").is_file():
            raise ModelLoadError(f"{where}: no tokenizer.json")
        config = read_json_object(directory / "config.json")
        generation = read_json_object(directory / "generation_config.json")
        providers = choose_providers(self.providers_preference)
        encoder = open_session(directory / "encoder_model.onnx", providers)
        features = encoder.get_inputs()[0]
        n_mels = features.shape[1] if isinstance(features.shape[1], int) else int(config.get("num_mel_bins", 80))
        decoder = self._open_decoder(directory, providers, config, where)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokens = WhisperTokens.from_tokenizer(tokenizer)
        vocab = decoder.first.session.get_outputs()[0].shape[-1]
        vocab = vocab if isinstance(vocab, int) else int(config.get("vocab_size", tokenizer.get_vocab_size()))
        suppress = np.zeros(vocab, dtype=bool)
        for token in generation.get("suppress_tokens", config.get("suppress_tokens", [])):
            if 0 <= int(token) < vocab:
                suppress[int(token)] = True
        suppress[tokens.timestamp_begin:] = True  # timestamps: decoding is without them
        suppress[min(vocab, tokenizer.get_vocab_size(with_added_tokens=True)):] = True
        begin = suppress.copy()
        for token in generation.get("begin_suppress_tokens", config.get("begin_suppress_tokens", [])):
            if 0 <= int(token) < vocab:
                begin[int(token)] = True
        self._encoder, self._decoder, self._tokenizer, self._tokens = encoder, decoder, tokenizer, tokens
        self._mel = MelSpec.from_preprocessor(read_json_object(directory / "preprocessor_config.json"), n_mels)
        self._suppress, self._suppress_begin = suppress, begin
        self._text_context = int(generation.get("max_length", config.get("max_target_positions", 448)))
        self._feature_dtype = _DTYPES.get(features.type, np.float32)

    @staticmethod
    def _open_decoder(directory: Path, providers: tuple[str, ...], config: Mapping[str, Any],
                      where: str) -> _Decoder:
        merged, plain = directory / "decoder_model_merged.onnx", directory / "decoder_model.onnx"
        with_past = directory / "decoder_with_past_model.onnx"
        if merged.is_file():
            first = later = open_session(merged, providers)
        elif plain.is_file():
            first = open_session(plain, providers)
            later = open_session(with_past, providers) if with_past.is_file() else None
        else:
            raise ModelLoadError(f"{where}: no decoder_model_merged.onnx or decoder_model.onnx")
        for session in (first, later):
            unknown = sorted(spec.name for spec in session.get_inputs() if spec.name not in _KNOWN_INPUTS
                             and not spec.name.startswith(PAST_PREFIX)) if session is not None else []
            if unknown:
                raise ModelLoadError(f"{where}: the decoder needs inputs this runner does not know: {unknown}")
        source = later if later is not None else first
        past = [spec for spec in source.get_inputs() if spec.name.startswith(PAST_PREFIX)]
        if later is not None and not past:
            raise ModelLoadError(f"{where}: the with-past decoder takes no past_key_values inputs")
        heads = int(config.get("decoder_attention_heads", 0)) or None
        head_dim = int(config["d_model"]) // heads if heads and "d_model" in config else None
        dtype: type[np.floating[Any]] = np.float32
        if past:
            shape = list(past[0].shape)
            heads = shape[1] if isinstance(shape[1], int) else heads
            head_dim = shape[3] if isinstance(shape[3], int) else head_dim
            dtype = _DTYPES.get(past[0].type, np.float32)
            if heads is None or head_dim is None:
                raise ModelLoadError(f"{where}: {past[0].name} has symbolic dims {shape} and config.json lacks "
                                     "decoder_attention_heads / d_model")
        return _Decoder(_Session.of(first, cached=False), _Session.of(later, cached=True) if later else None,
                        tuple(spec.name for spec in past), heads or 0, head_dim or 0, dtype)

    def unload(self) -> None:
        self._encoder = self._decoder = self._tokenizer = self._tokens = self._mel = None
        self._suppress = self._suppress_begin = None

    def _prefix(self, job: Transcription, language: str | None) -> list[int]:
        tokens = self.tokens
        prefix = [tokens.sot]
        if tokens.multilingual:
            prefix += [tokens.languages[language or "en"], tokens.translate if job.task == "translate"
                       else tokens.transcribe]
        return prefix + [tokens.no_timestamps]

    def _detect_language(self, decoder: _Decoder, encoded: np.ndarray) -> str:
        logits = decoder.step([self.tokens.sot], encoded, None)[0][-1]
        codes = list(self.tokens.languages)
        ids = np.array([self.tokens.languages[code] for code in codes])
        return codes[int(np.argmax(logits[ids]))]

    def _decode_window(self, decoder: _Decoder, encoded: np.ndarray, ids: list[int], sot_index: int, budget: int,
                       should_stop: StopCheck, emit: Callable[[int], None]) -> _Window:
        """Greedy decoding of one window from prefix `ids`, at most `budget` tokens.

        Tokens go to `emit` as they come, unless the window may be silence
        (no-speech probability above the threshold): then the caller decides."""
        suppress, begin = self._suppress, self._suppress_begin
        if suppress is None or begin is None:
            raise ModelLoadError(f"model {self.model_name!r} is not loaded")
        past: dict[str, np.ndarray] | None = None
        feed, logprob = ids, 0.0
        tokens: list[int] = []
        finish: FinishReason = "stop"
        held = False
        while True:
            if should_stop():
                finish = "cancelled"
                break
            if len(tokens) >= budget:
                finish = "length"
                break
            logits, new_past = decoder.step(feed, encoded, past)
            if past is None and not tokens and self.tokens.no_speech is not None:
                held = float(_softmax(logits[sot_index])[self.tokens.no_speech]) > NO_SPEECH_THRESHOLD
            last = logits[-1]
            last[begin if not tokens else suppress] = -np.inf
            token = int(np.argmax(last))
            logprob += float(last[token] - _logsumexp(last))
            if token == self.tokens.eot:
                break
            tokens.append(token)
            if not held:
                emit(token)
            if decoder.later is not None:
                past, feed = new_past, [token]
            else:
                feed = ids + tokens
        average = logprob / (len(tokens) + 1)
        silent = held and average < LOGPROB_THRESHOLD
        return _Window(tokens, finish, held, silent)

    def run(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        on_progress: ProgressCallback,
        should_stop: StopCheck,
    ) -> RunResult:
        encoder, decoder, tokenizer, mel = self._encoder, self._decoder, self._tokenizer, self._mel
        suppress, begin = self._suppress, self._suppress_begin
        if encoder is None or decoder is None or tokenizer is None or mel is None or suppress is None \
                or begin is None:
            raise ModelLoadError(f"model {self.model_name!r} is not loaded")
        started = time.perf_counter()
        job = Transcription.from_task(inputs, params, self.tokens)
        audio, seconds = load_audio(inputs.get("audio"), "audio")
        prompt_ids = tokenizer.encode(" " + job.prompt, add_special_tokens=False).ids if job.prompt else []
        history = list(prompt_ids)
        stream = _Stream(tokenizer)

        def emit(token: int) -> None:
            piece = stream.push(token)
            if piece:
                on_progress({"tokens": [piece], "index": len(stream.ids) - 1})

        language = job.language if self.tokens.multilingual else None
        finish: FinishReason = "stop"
        generated = 0
        for window in windows(audio, mel.chunk_samples):
            if job.max_tokens is not None and generated >= job.max_tokens:
                finish = "length"
            if finish != "stop":
                break
            features = log_mel_spectrogram(window, mel)[None].astype(self._feature_dtype)
            encoded = encoder.run(["last_hidden_state"], {encoder.get_inputs()[0].name: features})[0]
            if self.tokens.multilingual and language is None:
                language = self._detect_language(decoder, encoded)
            context = [self.tokens.sot_prev] + history[-(self._text_context // 2 - 1):] if history else []
            ids = context + self._prefix(job, language)
            budget = min(self._text_context // 2, self._text_context - len(ids))
            capped = job.max_tokens is not None and job.max_tokens - generated <= budget
            if job.max_tokens is not None:
                budget = min(budget, job.max_tokens - generated)
            decoded = self._decode_window(decoder, encoded, ids, len(context), budget, should_stop, emit)
            # a full window (a repetition loop, usually) moves on; only max_tokens ends the task
            finish = "stop" if decoded.finish == "length" and not capped else decoded.finish
            if decoded.held:  # maybe silence: streamed only if kept
                if decoded.silent:
                    continue
                for token in decoded.ids:
                    emit(token)
            generated += len(decoded.ids)
            history += decoded.ids
        output = stream.text()
        if len(output) > len(stream.sent):
            on_progress({"tokens": [output[len(stream.sent):]], "index": len(stream.ids) - 1})
        usage = {"audio_seconds": round(seconds, 3), "tokens": generated, "prompt_tokens": len(prompt_ids),
                 "seconds": time.perf_counter() - started}
        return RunResult(output=output, usage=usage, finish_reason=finish)

    def verify(
        self,
        inputs: Mapping[str, Any],
        params: Mapping[str, Any],
        claimed: Any,
        proof: Mapping[str, Any] | None,
        should_stop: StopCheck,
    ) -> Verdict:
        """Re-run the task and compare transcripts (verify_media.py has the rule)."""
        if not isinstance(claimed, str):
            return judge_transcript("", claimed)
        mine = self.run(inputs, params, lambda partial: None, should_stop)
        if mine.finish_reason == "cancelled":
            return Verdict(False, 0.0, "cancelled")
        return judge_transcript(str(mine.output), claimed)
