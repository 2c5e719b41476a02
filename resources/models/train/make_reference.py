#!/usr/bin/env python3
"""Reference numbers for Quantscope's tests, computed with Hugging Face transformers from the
*saved* model folders (never from the in-memory training state).

    python3 resources/models/train/make_reference.py [--out-root ROOT] [--smoke]

Writes ROOT/test/fixtures/reference/reference.json and one <model>-logits.safetensors per model.

Perplexity protocol (the evaluation engine implements the same):
  tokenize the whole held-out text without special tokens; split into consecutive
  non-overlapping windows of 256 tokens, dropping the remainder; run each window on its own
  from an empty cache (positions 0..255); average the NLL of the 255 predicted tokens of every
  window over all windows; ppl = exp(mean). Weights are loaded from the stored bf16/fp16 values
  and upcast to float32; all arithmetic is float32 (eager attention, TF32 off), the NLL is
  accumulated in float64.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import safetensors
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_tokenizer import HELDOUT_PATH, REPO_ROOT, encode_text, read_heldout  # noqa: E402

WINDOW = 256
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUPS = (128, 32)
# Three prompts of different character: English prose, indented code, non-ASCII text (the
# byte-level BPE must split multi-byte UTF-8 characters exactly as the Python library does).
PROMPTS = [
    "The Python Software Foundation is a non-profit organization that",
    "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "Unicode strings hold code points: “smart quotes”, café and 日本 need UTF-8.",
]
MAX_PROMPT_TOKENS = 32
GREEDY_TOKENS = 12
NLL_PREFIX = 16  # windows whose individual NLL is stored for every variant

INT4_RTN = {
    "name": "round-to-nearest asymmetric int4",
    "applies_to": "every decoder linear weight: model.layers.*.self_attn.{q,k,v,o}_proj.weight and "
                  "model.layers.*.mlp.{gate,up,down}_proj.weight (biases, norms, embed_tokens and "
                  "lm_head stay as stored)",
    "groups": "per output row, consecutive runs of g input columns (the weight is [out, in]; "
              "in is a multiple of g for every tensor of both models)",
    "formula": "m = min(group), M = max(group), scale = (M - m) / 15, scale = 1 if scale == 0; "
               "q = clamp(floor((w - m) / scale + 0.5), 0, 15); w' = q * scale + m",
    "arithmetic": "float32, each operation rounded separately (no fused multiply-add): "
                  "w is the stored value upcast to float32",
    "rounding": "half up (floor(v + 0.5)); v >= 0 so this is also half away from zero",
}


def set_exact_fp32() -> str:
    """TF32 off for matmuls. Each switch on its own: newer torch versions reject mixing the
    legacy flags with the newer fp32_precision API, so the first one that works is enough."""
    done = []
    for label, switch in (
        ("set_float32_matmul_precision(highest)", lambda: torch.set_float32_matmul_precision("highest")),
        ("matmul.allow_tf32=False", lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", False)),
        ("cudnn.allow_tf32=False", lambda: setattr(torch.backends.cudnn, "allow_tf32", False)),
    ):
        try:
            switch()
            done.append(label)
        except Exception as e:  # noqa: BLE001
            done.append(f"{label} failed: {e}"[:120])
    assert torch.get_float32_matmul_precision() == "highest"
    return "; ".join(done)


def rtn_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, dict]:
    """Quantize-dequantize one [out, in] weight on the CPU in float32 (IEEE, no FMA)."""
    rows, cols = w.shape
    assert cols % group == 0, (tuple(w.shape), group)
    x = w.detach().to("cpu", torch.float32).reshape(rows, cols // group, group)
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    scale = (hi - lo) / 15
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    v = (x - lo) / scale
    q = torch.clamp(torch.floor(v + 0.5), 0, 15)
    deq = q * scale
    deq = deq + lo
    info = {"ties": int(((v - torch.floor(v)) == 0.5).sum()), "q": q, "scale": scale, "min": lo}
    return deq.reshape(rows, cols), info


def decoder_linears(model):
    for i, layer in enumerate(model.model.layers):
        for owner, names in ((layer.self_attn, LINEAR_NAMES[:4]), (layer.mlp, LINEAR_NAMES[4:])):
            for n in names:
                kind = "self_attn" if owner is layer.self_attn else "mlp"
                yield f"model.layers.{i}.{kind}.{n}.weight", getattr(owner, n)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Mean NLL of each window's 255 predictions, in float64."""
    out = []
    for b in range(0, windows.shape[0], batch):
        x = windows[b:b + batch].cuda()
        logits = model(input_ids=x, use_cache=False).logits
        lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
        nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
        out.append(nll.mean(dim=1).cpu().numpy())
    return np.concatenate(out)


def load(cls, folder: Path, dtype: torch.dtype):
    model = cls.from_pretrained(folder, dtype=dtype, attn_implementation="eager", local_files_only=True)
    assert all(p.dtype == dtype for p in model.parameters()), "weights not in the requested dtype"
    return model.cuda().eval()


def tensor_stats(folder: Path) -> tuple[dict, dict]:
    """Statistics of every stored tensor, read with safetensors (not transformers), in float64.
    std is the population standard deviation (divide by N)."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    stats, raw = {}, {}
    for fname in files:
        with safe_open(str(folder / fname), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                d = t.double()
                stats[name] = {"file": fname, "dtype": str(t.dtype).replace("torch.", ""),
                               "shape": list(t.shape), "numel": t.numel(), "min": d.min().item(),
                               "max": d.max().item(), "mean": d.mean().item(),
                               "std": d.std(correction=0).item(), "absmax": d.abs().max().item()}
                raw[name] = t
    return dict(sorted(stats.items())), raw


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> dict:
    seq = list(ids)
    margins = []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([seq]).cuda(), use_cache=False).logits[0, -1].double()
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(int(top.indices[0]))
    return {"new_ids": seq[len(ids):], "min_top1_margin": min(margins)}


@torch.no_grad()
def evaluate_model(key: str, cls, folder: Path, windows: torch.Tensor, prompt_ids: list[list[int]],
                   fixtures: Path, rel: str, log) -> dict:
    config = json.loads((folder / "config.json").read_text())
    stats, raw = tensor_stats(folder)
    stored_dtype = next(v["dtype"] for k, v in stats.items() if k.endswith("q_proj.weight"))
    entry: dict = {"path": rel, "architecture": config["architectures"][0],
                   "model_type": config["model_type"], "stored_dtype": stored_dtype,
                   "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
                   "parameters": sum(v["numel"] for v in stats.values())}

    m32 = load(cls, folder, torch.float32)
    entry["parameters_module"] = sum(p.numel() for p in m32.parameters())
    inv = m32.model.rotary_emb.inv_freq.double()
    entry["rope_theta_effective"] = float(inv[1] ** (-inv.numel()))
    nll = {"fp32": window_nll(m32, windows)}
    logits32 = [m32(input_ids=torch.tensor([ids]).cuda(), use_cache=False).logits[0].float().cpu()
                for ids in prompt_ids]
    entry["greedy_fp32"] = [greedy(m32, ids, GREEDY_TOKENS) for ids in prompt_ids]
    originals = {name: lin.weight.detach().clone() for name, lin in decoder_linears(m32)}
    rtn_error, ties = {}, {}
    for g in GROUPS:
        ties[g] = 0
        for name, lin in decoder_linears(m32):
            deq, info = rtn_int4(originals[name], g)
            ties[g] += info["ties"]
            diff = deq.double() - originals[name].cpu().double()
            rtn_error.setdefault(name, {})[f"g{g}"] = {"mse": diff.pow(2).mean().item(),
                                                      "max_abs": diff.abs().max().item()}
            lin.weight.data.copy_(deq.to(lin.weight.device))
            if g == 32 and name == "model.layers.0.self_attn.q_proj.weight":
                entry["rtn_example"] = {
                    "tensor": name, "group": g, "row": 0, "columns": "0..63",
                    "w": originals[name][0, :64].cpu().tolist(),
                    "q": info["q"][0, :2].reshape(-1).int().tolist(),
                    "scale": info["scale"][0, :2].reshape(-1).tolist(),
                    "min": info["min"][0, :2].reshape(-1).tolist(),
                    "w_dequantized": deq[0, :64].tolist()}
        nll[f"int4_rtn_g{g}"] = window_nll(m32, windows)
        for name, lin in decoder_linears(m32):
            lin.weight.data.copy_(originals[name])
    entry["int4_rtn_exact_ties"] = {f"g{g}": ties[g] for g in GROUPS}
    entry["int4_rtn_error"] = rtn_error
    del m32

    # Informational variants: a failure here is logged, not fatal.
    logits64 = None
    try:
        m64 = load(cls, folder, torch.float64)
        nll["fp64"] = window_nll(m64, windows)
        logits64 = [m64(input_ids=torch.tensor([ids]).cuda(), use_cache=False).logits[0].cpu()
                    for ids in prompt_ids]
        del m64
    except Exception as e:  # noqa: BLE001
        log(f"{key}: fp64 evaluation failed: {e!r}")
    try:
        mstored = load(cls, folder, getattr(torch, stored_dtype))
        nll["stored_dtype_compute"] = window_nll(mstored, windows)
        del mstored
    except Exception as e:  # noqa: BLE001
        log(f"{key}: {stored_dtype} evaluation failed: {e!r}")
    torch.cuda.empty_cache()

    mean = {k: float(v.mean()) for k, v in nll.items()}
    entry["mean_nll"] = mean
    entry["ppl"] = {k: math.exp(v) for k, v in mean.items()}
    entry["window_nll"] = {"fp32": nll["fp32"].tolist(),
                           **{k: v[:NLL_PREFIX].tolist() for k, v in nll.items() if k != "fp32"}}
    logits_file = fixtures / f"{key}-logits.safetensors"
    save_file({f"prompt{i}": t.contiguous() for i, t in enumerate(logits32)}, str(logits_file),
              metadata={"model": rel, "dtype": "float32", "layout": "[positions, vocab]"})
    entry["logits"] = {
        "file": f"test/fixtures/reference/{logits_file.name}",
        "tensors": [f"prompt{i}" for i in range(len(logits32))], "dtype": "F32",
        "layout": "[positions, vocab]: row p is the logits after prompt tokens 0..p",
        "fp32_vs_fp64_max_abs": None if logits64 is None else
        max(float((a.double() - b).abs().max()) for a, b in zip(logits32, logits64)),
    }
    entry["tensor_stats"] = stats
    entry["config"] = config
    log(f"{key}: ppl " + ", ".join(f"{k} {v:.4f}" for k, v in entry["ppl"].items())
        + f"; logits fp32 vs fp64 max |d| {entry['logits']['fp32_vs_fp64_max_abs']}"
        + f"; rtn ties {entry['int4_rtn_exact_ties']}")
    return entry


def run(out_root: Path, smoke: bool = False, log=print) -> dict:
    log(f"fp32 switches: {set_exact_fp32()}")
    models_dir = out_root / "resources" / "models"
    fixtures = out_root / "test" / "fixtures" / "reference"
    fixtures.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(models_dir / "default" / "tokenizer.json"))
    text = read_heldout()
    ids = encode_text(tok, text)
    n_windows = len(ids) // WINDOW
    windows = torch.tensor(ids[: n_windows * WINDOW], dtype=torch.long).view(n_windows, WINDOW)
    if smoke:
        windows = windows[:8]
    prompt_ids = [encode_text(tok, p) for p in PROMPTS]
    if not smoke:
        assert all(len(p) <= MAX_PROMPT_TOKENS for p in prompt_ids), [len(p) for p in prompt_ids]
    for p, pid in zip(PROMPTS, prompt_ids):
        assert tok.decode(pid) == p, "byte-level BPE must round-trip the prompt"

    # Cross-check: transformers' own tokenizer loading of the shipped files gives the same ids.
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(str(models_dir / "default"), local_files_only=True)
        same = all(auto(p, add_special_tokens=False)["input_ids"] == pid for p, pid in zip(PROMPTS, prompt_ids)) \
            and auto(text, add_special_tokens=False)["input_ids"] == ids
        auto_check = f"{type(auto).__name__}: " + ("same ids" if same else "DIFFERENT ids")
    except Exception as e:  # recorded, not fatal: the tokenizers library is the reference
        auto_check = f"AutoTokenizer failed: {e!r}"[:300]
    log(f"AutoTokenizer check: {auto_check}")

    ref: dict = {
        "about": "Reference numbers for Quantscope's shipped models; see resources/models/train/README.md",
        "generated_by": "resources/models/train/make_reference.py",
        "smoke": smoke,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)},
        "protocol": {
            "text": "resources/eval/heldout.txt, whole file, UTF-8",
            "tokenize": "tokenizer.json of the model folder, whole text at once, no special tokens",
            "window": WINDOW, "predicted_per_window": WINDOW - 1,
            "windows": "consecutive, non-overlapping, remainder dropped; each from an empty cache",
            "ppl": "exp(mean NLL over all predicted tokens of all windows)",
            "fp32": "weights as stored (bf16 / fp16) upcast to float32, float32 compute, eager "
                    "attention, TF32 off, log-softmax and sums in float64",
            "fp64": "same in float64, except where transformers itself computes in float32 "
                    "(RMSNorm statistics, RoPE cos/sin tables): how far fp32 is from exact",
            "stored_dtype_compute": "weights and compute in the stored dtype (informational)",
        },
        "heldout": {"file": "resources/eval/heldout.txt",
                    "sha256": hashlib.sha256(HELDOUT_PATH.read_bytes()).hexdigest(),
                    "characters": len(text), "bytes": len(text.encode()), "tokens": len(ids),
                    "windows": n_windows, "windows_evaluated": int(windows.shape[0]),
                    "predicted_tokens": int(windows.shape[0]) * (WINDOW - 1),
                    "first_ids": ids[:32], "auto_tokenizer_check": auto_check},
        "prompts": [{"text": p, "ids": pid} for p, pid in zip(PROMPTS, prompt_ids)],
        "int4_rtn": INT4_RTN,
        "suggested_tolerances": {
            "ppl_fp32_relative": 1e-4, "ppl_int4_relative": 1e-3, "logits_max_abs": 2e-3,
            "tensor_stats_relative": 1e-9,
            "note": "an fp32 engine should land far inside these; int4 allows for rounding ties "
                    "resolved differently; greedy ids are informational (see min_top1_margin)",
        },
        "models": {},
    }
    for key, cls in (("default", LlamaForCausalLM), ("qwen2-tiny", Qwen2ForCausalLM)):
        ref["models"][key] = evaluate_model(key, cls, models_dir / key, windows, prompt_ids, fixtures,
                                            f"resources/models/{key}", log)
    (fixtures / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    log(f"wrote {fixtures / 'reference.json'}")
    return ref


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-root", type=Path, default=REPO_ROOT)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    run(a.out_root.resolve(), smoke=a.smoke)
