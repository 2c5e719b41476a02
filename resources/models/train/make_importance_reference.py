#!/usr/bin/env python3
"""Independent layer-importance numbers for Quantscope's `importance` tests, computed on the GPU
machine with PyTorch and Hugging Face transformers from the saved model folders:

    python3 resources/models/train/make_importance_reference.py [--out-root ROOT] [--smoke]

Writes ROOT/test/fixtures/reference/importance-reference.json.

Definitions (the same as worker/importance/):
  residuals  h_l = input of decoder block l, h_{l+1} = its output, taken with hooks on the
             blocks (NOT from output_hidden_states alone: transformers applies the final norm to
             the last entry of hidden_states; the hooks see the raw residual, and the script
             checks hidden_states against them, including that last entry = norm(raw)).
  logit lens z = lm_head(final_norm(h)) with the final norm on, lm_head(h) with it off.
  LSAQ       T = the k token ids of largest z per position; ties broken towards the lower id
             (a stable descending sort, as the ONNX TopK operator specifies); per position
             J = |T_in ∩ T_out| / |T_in ∪ T_out|; importance = 1 − mean J over positions.
  cosine     importance = 1 − mean over positions of cos(h_l, h_{l+1}) (ShortGPT-style).
Protocol (as make_reference.py): held-out text tokenized whole without special tokens,
consecutive 256-token windows from an empty cache, every position of every window counted
(windows have equal length, so the mean over windows of per-window means is the pooled mean).
float32 weights and compute, eager attention, TF32 off; the lens logits are float32 (as the
engine's), Jaccard and cosine averaged in float64. A float64 lens on the same residuals is stored
beside it as a measure of how much fp32 rounding at the k-th place moves the sets.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_tokenizer import HELDOUT_PATH, REPO_ROOT, encode_text, read_heldout  # noqa: E402
from make_reference import WINDOW, load, set_exact_fp32  # noqa: E402

KS = (10, 5)
BATCH = 16


def topk_ids(z: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """Top-k ids of each row, largest first, equal values in ascending id order; also the number
    of rows whose k-th and (k+1)-th values are equal (where tie-breaking decides the set)."""
    vals, idx = torch.sort(z, dim=-1, descending=True, stable=True)
    boundary_ties = int((vals[:, k - 1] == vals[:, k]).sum())
    return idx[:, :k], boundary_ties


def jaccard(a: torch.Tensor, b: torch.Tensor, vocab: int) -> torch.Tensor:
    """Per-row Jaccard similarity of two [rows, k] id sets (ids distinct within a row)."""
    member = torch.zeros(a.shape[0], vocab, dtype=torch.bool, device=a.device)
    member.scatter_(1, a, True)
    inter = member.gather(1, b).sum(1).double()
    return inter / (a.shape[1] + b.shape[1] - inter)


@torch.no_grad()
def block_residuals(model, x: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """[h_0 … h_L] as [batch·seq, hidden] float32, from hooks on every decoder block."""
    layers = model.model.layers
    ins: list = [None] * len(layers)
    outs: list = [None] * len(layers)

    def pre(i):
        def hook(_m, args, kwargs):
            ins[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def post(i):
        def hook(_m, _args, output):
            outs[i] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [l.register_forward_pre_hook(pre(i), with_kwargs=True) for i, l in enumerate(layers)]
    handles += [l.register_forward_hook(post(i)) for i, l in enumerate(layers)]
    try:
        hs = model(input_ids=x, use_cache=False, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    L = len(layers)
    checks = {
        # block l's output is block l+1's input (nothing else sits on the residual stream)
        "out_eq_next_in": max(float((outs[i] - ins[i + 1]).abs().max()) for i in range(L - 1)) if L > 1 else 0.0,
        # hidden_states[l] = input of block l for l < L
        "hidden_states_eq_inputs": max(float((hs[i] - ins[i]).abs().max()) for i in range(L)),
        # the last hidden state is normed: hidden_states[L] = norm(raw output of the last block)
        "last_hidden_is_normed": float((hs[L] - model.model.norm(outs[L - 1])).abs().max()),
        "last_hidden_minus_raw": float((hs[L] - outs[L - 1]).abs().max()),
    }
    res = [t.reshape(-1, t.shape[-1]).float() for t in ins + [outs[L - 1]]]
    return res, checks


@torch.no_grad()
def model_importance(cls, folder: Path, windows: torch.Tensor, log) -> dict:
    model = load(cls, folder, torch.float32)
    L = len(model.model.layers)
    V = model.lm_head.weight.shape[0]
    norm = model.model.norm
    lm = model.lm_head.weight  # [V, H] float32 (tied: the embedding)
    variants = [(f"lsaq_k{k}_{'norm' if fn else 'nonorm'}", k, fn) for k in KS for fn in (True, False)]
    per_window = {name: [] for name, _, _ in variants}
    per_window["lsaq_k10_norm_fp64lens"] = []
    per_window["cosine"] = []
    ties = {name: 0 for name, _, _ in variants}
    checks_max: dict = {}
    for b in range(0, windows.shape[0], BATCH):
        x = windows[b:b + BATCH].cuda()
        nb = x.shape[0]
        res, checks = block_residuals(model, x)
        for key, v in checks.items():
            checks_max[key] = max(checks_max.get(key, 0.0), v)
        for fn in (True, False):
            lens = [F.linear(norm(h) if fn else h, lm) for h in res]  # float32 [rows, V]
            for k in KS:
                name = f"lsaq_k{k}_{'norm' if fn else 'nonorm'}"
                sets = []
                for z in lens:
                    ids, t = topk_ids(z, k)
                    sets.append(ids)
                    ties[name] += t
                j = torch.stack([jaccard(sets[l], sets[l + 1], V) for l in range(L)])  # [L, rows]
                per_window[name].append((1 - j.view(L, nb, WINDOW).mean(-1)).T.cpu())  # [nb, L]
            del lens
        lens64 = [F.linear(norm(h).double(), lm.double()) for h in res]
        sets = [topk_ids(z, 10)[0] for z in lens64]
        j = torch.stack([jaccard(sets[l], sets[l + 1], V) for l in range(L)])
        per_window["lsaq_k10_norm_fp64lens"].append((1 - j.view(L, nb, WINDOW).mean(-1)).T.cpu())
        del lens64
        cos = torch.stack([F.cosine_similarity(res[l].double(), res[l + 1].double(), dim=-1) for l in range(L)])
        per_window["cosine"].append((1 - cos.view(L, nb, WINDOW).mean(-1)).T.cpu())
    del model
    torch.cuda.empty_cache()
    out: dict = {"layers": L, "vocab": V, "hook_checks_max_abs": checks_max,
                 "boundary_ties": ties, "methods": {}}
    for name, chunks in per_window.items():
        w = torch.cat(chunks).double()  # [windows, L]
        out["methods"][name] = {"mean": w.mean(0).tolist(),
                                "per_window": [[round(v, 7) for v in row] for row in w.tolist()]}
    log(f"{folder.name}: checks {checks_max}; ties {ties}")
    for name, m in out["methods"].items():
        log(f"  {name:24s} " + " ".join(f"{v:.4f}" for v in m["mean"]))
    return out


def run(out_root: Path, smoke: bool, log=print) -> dict:
    log(f"fp32 switches: {set_exact_fp32()}")
    models_dir = out_root / "resources" / "models"
    fixtures = out_root / "test" / "fixtures" / "reference"
    fixtures.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(models_dir / "default" / "tokenizer.json"))
    ids = encode_text(tok, read_heldout())
    n = len(ids) // WINDOW
    windows = torch.tensor(ids[: n * WINDOW], dtype=torch.long).view(n, WINDOW)
    if smoke:
        windows = windows[:4]
    ref: dict = {
        "about": "LSAQ and cosine layer importance by PyTorch/transformers; definitions in the generator's docstring",
        "generated_by": "resources/models/train/make_importance_reference.py",
        "smoke": smoke,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "cuda": torch.version.cuda,
                     "device": torch.cuda.get_device_name(0)},
        "protocol": {
            "text": "resources/eval/heldout.txt", "window": WINDOW,
            "windows": int(windows.shape[0]),
            "positions": "all positions of every window (the last one too)",
            "lsaq": "importance_l = 1 - mean_pos |T_in ∩ T_out| / |T_in ∪ T_out|, T = top-k ids of lm_head(final_norm(h)) "
                    "(_norm) or lm_head(h) (_nonorm), h_l = input of block l, h_{l+1} = its output",
            "ties": "descending stable sort: equal logits in ascending token-id order (ONNX TopK's rule)",
            "cosine": "importance_l = 1 - mean_pos cos(h_l, h_{l+1})",
            "per_window": "[window][layer], window w = tokens 256w … 256w+255 of the held-out ids",
            "arithmetic": "float32 model and lens logits, TF32 off; Jaccard and cosine in float64",
        },
        "heldout_sha256": hashlib.sha256(HELDOUT_PATH.read_bytes()).hexdigest(),
        "models": {},
    }
    for key, cls in (("default", LlamaForCausalLM), ("qwen2-tiny", Qwen2ForCausalLM)):
        entry = model_importance(cls, models_dir / key, windows, log)
        entry["path"] = f"resources/models/{key}"
        ref["models"][key] = entry
    path = fixtures / "importance-reference.json"
    path.write_text(json.dumps(ref, indent=None, separators=(",", ":")) + "\n")
    log(f"wrote {path} ({path.stat().st_size} bytes)")
    return ref


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-root", type=Path, default=REPO_ROOT)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    run(a.out_root.resolve(), smoke=a.smoke)
