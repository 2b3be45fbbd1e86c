# The CLIP tokenizer against a reference: OpenAI CLIP's own BPE algorithm
# (clip/simple_tokenizer.py: basic/whitespace cleaning, lowercase, the
# pre-tokenisation regex, byte -> unicode mapping, greedy lowest-rank merges with
# "</w>" on the last symbol), re-implemented here in plain Python on the tiny
# pack's vocab.json / merges.txt.
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from engine.worker.packs.sd_tiny import ensure_sd_tiny
from engine.worker.runners import ModelLoadError
from engine.worker.runners.clip_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    ClipTokenizer,
    load_clip_tokenizer,
)

# CLIP's pattern with \p{L} / \p{N} spelt for ASCII (the test texts are ASCII).
_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")


def _byte_encoder() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def reference_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    ranks = {pair: i for i, pair in enumerate(merges)}
    encoder = _byte_encoder()
    text = re.sub(r"\s+", " ", text).strip().lower()
    ids = []
    for token in _PATTERN.findall(text):
        word = [*("".join(encoder[b] for b in token.encode("utf-8")))]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids += [vocab[piece] for piece in word]
    return ids


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_sd_tiny(tmp_path_factory.mktemp("packs") / "sd") / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> ClipTokenizer:
    return load_clip_tokenizer(tokenizer_dir)


@pytest.mark.parametrize(
    "text",
    [
        "a photo of a cat",
        "A  Photo\tof an ASTRONAUT riding a horse, cinematic!!",
        "it's the dog's ball; they'll see 2024 stars...",
        "zebra quokka xylophone",  # words the tiny vocab lacks: byte-level pieces
        "",
    ],
)
def test_ids_match_the_reference_clip_bpe(tokenizer: ClipTokenizer, tokenizer_dir: Path, text: str) -> None:
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line]
    expected = reference_encode(text, vocab, merges)  # type: ignore[arg-type]
    ids, cut = tokenizer.encode(text)
    assert cut == 0 and len(ids) == 77
    body = [vocab[BOS_TOKEN], *expected, vocab[EOS_TOKEN]]
    assert ids.tolist() == body + [vocab[EOS_TOKEN]] * (77 - len(body))  # pad = eos, as SD 1.x


def test_words_end_with_the_end_of_word_suffix(tokenizer: ClipTokenizer) -> None:
    ids, _ = tokenizer.encode("Cat")
    pieces = [tokenizer.tokenizer.id_to_token(int(i)) for i in ids[:3]]
    assert pieces == [BOS_TOKEN, "cat</w>", EOS_TOKEN]


def test_truncation_keeps_bos_and_eos(tokenizer: ClipTokenizer) -> None:
    ids, cut = tokenizer.encode("cat " * 80)
    assert cut == 5 and ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert len(ids) == 77


def test_max_length_and_pad_come_from_the_config(tmp_path: Path, tokenizer_dir: Path) -> None:
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 16, "pad_token": {"content": "!"}}))
    tok = load_clip_tokenizer(tmp_path)
    ids, _ = tok.encode("a cat")
    assert len(ids) == 16 and ids[-1] == tok.pad_id == tok.tokenizer.token_to_id("!")


def test_missing_files_and_tokens_are_load_errors(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="vocab.json"):
        load_clip_tokenizer(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<start>"}))
    with pytest.raises(ModelLoadError, match="lacks the special tokens bos '<start>'"):
        load_clip_tokenizer(tmp_path)
