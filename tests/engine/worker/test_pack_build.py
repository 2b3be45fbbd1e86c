from __future__ import annotations

from pathlib import Path

import pytest

from engine.worker.packs import PackBuilder, PackError, cache_root, ensure_pack


def _builder(version: int, calls: list[Path]) -> PackBuilder:
    def write(directory: Path) -> None:
        calls.append(directory)
        (directory / "weights.bin").write_bytes(bytes([version]) * 4)

    return PackBuilder("test-pack", version, write, "test weights")


def test_ensure_pack_builds_once_and_rebuilds_on_a_new_version(tmp_path: Path) -> None:
    calls: list[Path] = []
    target = tmp_path / "pack"
    assert ensure_pack(target, _builder(1, calls)) == target
    assert (target / "weights.bin").read_bytes() == b"\x01" * 4
    ensure_pack(target, _builder(1, calls))
    assert len(calls) == 1  # current: not rebuilt
    ensure_pack(target, _builder(2, calls))
    assert len(calls) == 2 and (target / "weights.bin").read_bytes() == b"\x02" * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_ensure_pack_never_replaces_an_operators_directory(tmp_path: Path) -> None:
    own = tmp_path / "own-export"
    own.mkdir()
    (own / "model.onnx").write_bytes(b"mine")
    with pytest.raises(PackError, match="not a NeuroGrid pack"):
        ensure_pack(own, _builder(1, []))
    assert (own / "model.onnx").read_bytes() == b"mine"


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def write(directory: Path) -> None:
        (directory / "half").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        ensure_pack(tmp_path / "pack", PackBuilder("p", 1, write))
    assert list(tmp_path.iterdir()) == []


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEUROGRID_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("NEUROGRID_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "neurogrid"
