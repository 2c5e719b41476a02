"""Corpus reading and byte-level BPE tokenizer training (needs `tokenizers`, not torch).

Shared by train.py and make_reference.py; kept free of torch so the tokenizer can be built and
checked on a machine without a GPU.
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TRAIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = TRAIN_DIR.parents[2]
HELDOUT_PATH = REPO_ROOT / "resources" / "eval" / "heldout.txt"
DOC_SEPARATOR = "\x1e"  # must match prepare_corpus.py
EOS_TOKEN = "<|endoftext|>"


def read_documents(name: str) -> list[str]:
    """Documents of corpus-train.txt.xz or corpus-valid.txt.xz, in file order."""
    text = lzma.decompress((TRAIN_DIR / name).read_bytes()).decode("utf-8")
    return [d.strip("\n") + "\n" for d in text.split(f"\n{DOC_SEPARATOR}\n")]


def read_heldout() -> str:
    return HELDOUT_PATH.read_text(encoding="utf-8")


def train_tokenizer(documents: list[str], vocab_size: int) -> Tokenizer:
    """GPT-2 style byte-level BPE: every byte is in the base alphabet, so any UTF-8 text
    encodes without an unknown token. No normalizer and no post-processor: encode() never
    adds special tokens, with or without add_special_tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],  # id 0; separates documents in the training stream
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json written by hand (not by transformers' save_pretrained) so that it
    is the same whatever transformers version retrains: the class name maps to the generic
    tokenizers backend in transformers 4 and 5, and no BOS/EOS is added automatically."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {
            "0": {"content": EOS_TOKEN, "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True}
        },
    }


def save_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"), pretty=False)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(model_max_length), indent=2) + "\n", encoding="utf-8")


def encode_documents(tok: Tokenizer, documents: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(documents, add_special_tokens=False)]


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


if __name__ == "__main__":
    # Quick local check without torch: python3 corpus_tokenizer.py OUT_FOLDER [VOCAB]
    import sys
    import time

    out = Path(sys.argv[1])
    vocab = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    t0 = time.time()
    docs = read_documents("corpus-train.txt.xz")
    tok = train_tokenizer(docs, vocab)
    save_tokenizer(tok, out, 2048)
    ids = encode_text(tok, read_heldout())
    train_tokens = sum(len(x) for x in encode_documents(tok, docs))
    print(f"vocab {tok.get_vocab_size()} train tokens {train_tokens} heldout tokens {len(ids)} "
          f"windows {len(ids) // 256} in {time.time() - t0:.1f}s")
