#!/usr/bin/env python3
"""Cut resources/eval/calibration.txt from the default model's TRAINING corpus (standard library
only, deterministic; no GPU, no tokenizer needed):

    python3 resources/models/train/make_calibration.py

Calibration-based quantizers (GPTQ, AWQ) must never see the text they are evaluated on, so the
calibration text comes from corpus-train.txt.xz, whose documents are disjoint from
resources/eval/heldout.txt by construction (prepare_corpus.py splits by document). The choice:
training documents in SHA-256 order of "calibration:" + path (a different order from the one
the split used, so the sample is not biased towards any split boundary), skipping documents
over MAX_DOC_CHARS (so that several documents, not one long page, make up the sample), whole
documents until TARGET_CHARS characters (~4 characters a token:
16 411 tokens with the shipped tokenizer, 64 windows of 256 tokens; make_quant_reference.py
asserts at least 64).
Documents are joined in the chosen order with one blank line, as heldout.txt is.
"""
from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

from prepare_corpus import DOC_SEPARATOR  # standard library only, like this script

TRAIN_DIR = Path(__file__).resolve().parent
EVAL_DIR = TRAIN_DIR.parents[1] / "eval"
HELDOUT_PATH = EVAL_DIR / "heldout.txt"
CALIBRATION_PATH = HELDOUT_PATH.parent / "calibration.txt"
TARGET_CHARS = 60_000
MAX_DOC_CHARS = 12_000


def read_documents(name: str) -> list[str]:
    """As corpus_tokenizer.read_documents, which needs the tokenizers package for its module."""
    text = lzma.decompress((TRAIN_DIR / name).read_bytes()).decode("utf-8")
    return [d.strip("\n") + "\n" for d in text.split(f"\n{DOC_SEPARATOR}\n")]


def training_paths() -> list[str]:
    """Paths of the training documents in corpus-train.txt.xz order (the manifest lists them so)."""
    rows = [line.split("\t") for line in (TRAIN_DIR / "corpus-manifest.tsv").read_text().splitlines()[1:]]
    return [path for split, path, _ in rows if split == "train"]


def choose_documents() -> list[tuple[str, str]]:
    docs = read_documents("corpus-train.txt.xz")
    paths = training_paths()
    assert len(docs) == len(paths), (len(docs), len(paths))
    order = sorted(zip(paths, docs), key=lambda pd: hashlib.sha256(f"calibration:{pd[0]}".encode()).hexdigest())
    chosen, total = [], 0
    for path, text in order:
        if len(text) > MAX_DOC_CHARS:
            continue
        chosen.append((path, text))
        total += len(text)
        if total >= TARGET_CHARS:
            break
    return chosen


def calibration_text(chosen: list[tuple[str, str]]) -> str:
    return "\n".join(text for _, text in chosen)


def check_disjoint(text: str, chosen: list[tuple[str, str]]) -> None:
    """No chosen document is a held-out one, and no 200-character run of the calibration text
    occurs in heldout.txt (catches shared boilerplate paragraphs too)."""
    heldout = HELDOUT_PATH.read_text(encoding="utf-8")
    held_docs = {p for s, p, _ in (l.split("\t") for l in (TRAIN_DIR / "corpus-manifest.tsv").read_text().splitlines()[1:]) if s == "heldout"}
    assert not held_docs & {p for p, _ in chosen}
    step = 200
    for i in range(0, max(len(text) - step, 1), step // 2):
        piece = text[i:i + step]
        if len(piece.strip()) >= 150:
            assert piece not in heldout, f"calibration text at character {i} also occurs in heldout.txt"


def main() -> None:
    chosen = choose_documents()
    text = calibration_text(chosen)
    check_disjoint(text, chosen)
    CALIBRATION_PATH.write_text(text, encoding="utf-8")
    print(f"{CALIBRATION_PATH}: {len(chosen)} documents, {len(text)} characters, "
          f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    for path, t in chosen:
        print(f"- {path} ({len(t)} characters)")


if __name__ == "__main__":
    main()
