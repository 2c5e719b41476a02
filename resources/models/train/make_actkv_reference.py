#!/usr/bin/env python3
"""Independent PyTorch reference perplexities for activation and KV-cache fake quantization (issue 12).

    python3 resources/models/train/make_actkv_reference.py [--out FILE] [--smoke]

The same fake-quant definitions as the TS engine (README "KV-cache and activation quantization
in eval"; worker/inference/act-quant.ts, kv-quant.ts, plan/act-codebooks.ts,
quant/activations/*), written here again in torch from those definitions, on
resources/models/default with make_reference.py's protocol (float32, TF32 off, 256-token
windows of resources/eval/heldout.txt from an empty cache, NLL in float64). Every entry is
measured on all 388 windows; the first 8 windows' ppl is kept apart for the unit test
(test/unit/actkv-vs-reference.test.ts). Results: test/fixtures/reference/actkv-reference.json.

Activations (the input of every decoder linear: q|k|v share the attention norm's output, gate|up
the MLP norm's; o and down their own; lm_head stays full precision):
- outliers=k: the k largest and k smallest values of each token vector pass unchanged and are
  left out of the scale, the norm and the codebook fit (torch.topk per side).
- int: over the non-outliers m = min, M = max, s = max((M − m)/(2^b − 1), 2^-126),
  q = clamp(⌊(x − m)/s + ½⌋, 0, 2^b − 1), x̂ = q·s + m (float32).
- kmeans: n = max |x| over the token's non-outliers, u = x / max(n, 2^-126), code = the number of
  codebook midpoints fround((c_i + c_{i+1})/2) strictly below u, x̂ = c[code]·n.
  Codebooks: one per linear input (L{l}.attn_in, o_in, mlp_in, down_in), fitted on the raw
  inputs of the FULL-PRECISION model (no weight or activation quantization) over the first 32
  windows of resources/eval/calibration.txt: per token the outliers are set aside, the rest
  divided by the token's n (tokens with n = 0 dropped), rounded to fp16 (−0 counted as +0) and
  counted per distinct value; weighted 1-D k-means of those (value, count) points into 2^b
  centroids: greedy k-means++ (scikit-learn's: first centre ∝ count, then 2 + ⌊ln K⌋ candidates
  ∝ count·D², keep the one with the least Σ count·D²; random numbers from torch's generator,
  not the engine's mulberry32), Lloyd with a value on a midpoint going to the lower centroid,
  an empty cluster keeping its centroid, stop after 300 iterations or once Σ(c' − c)² ≤ 1e-4 ×
  the weighted variance; centroids stored float32. The codebooks of the engine are not read.
  k-means entries are re-run with other seeds (pplSeeds): how much of a ppl is the seed.
Conditioning (pplPerturbed): every entry with activation or KV quantization is re-run with each
quantizer's input multiplied by 1 + 2^-23·u, u ~ U(−1, 1) (one float32 ulp, what another
runtime's rounding of the same sums does): 4-bit codes without outliers flip at rounding
boundaries and the flips compound over the layers: on the first 8 windows this alone moved A4
int without outliers by 1.9% (0.3% on all 388 windows), W4A8 and KV entries by at most 0.3%.
- weights (W4): rtn:bits=4,group=128 (asymmetric, fp16 scale and minimum), make_quant_reference.rtn_asym.
KV cache (weights and activations full precision):
- K after RoPE and V, per token and kv head over head_dim: asymmetric min–max,
  s = max((M − m)/(2^b − 1), 2^-126), codes ⌊(x − m)/s + ½⌋ clipped to [0, 2^b − 1], x̂ = q·s + m.
- smoothed: static per layer, kv head and channel δ = (max + min)/2, σ = (max − min)/2 (σ = 1 for a
  constant channel) of K (after RoPE) and V over the first 32 calibration windows of the
  full-precision model; X̃ = (X − δ)/σ quantized per token, then X̂·σ + δ.
- naive: every key and value quantized. past-only: the query at t sees quantized K/V at keys
  j < t and its own full-precision k_t, v_t at j = t (scores and values both).
Attention is this script's own (transformers' eager_attention_forward replaced, its output
checked against reference.json's fp32 ppl with the KV quantization off).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_tokenizer import REPO_ROOT, read_heldout  # noqa: E402
from make_reference import decoder_linears, load, set_exact_fp32, window_nll  # noqa: E402
from make_quant_reference import (CALIBRATION_PATH, MODEL_DIR, REFERENCE_JSON, rtn_asym,  # noqa: E402
                                  token_windows)

OUT_JSON = REPO_ROOT / "test" / "fixtures" / "reference" / "actkv-reference.json"
QUANT_REFERENCE_JSON = REPO_ROOT / "test" / "fixtures" / "reference" / "quant-reference.json"
CALIBRATION_WINDOWS = 32  # DEFAULT_ACT_CALIBRATION_WINDOWS = DEFAULT_KV_CALIBRATION_WINDOWS in the engine
TEST_WINDOWS = 8
TINY = 1.1754943508222875e-38  # 2^-126, the engine's floor on a step or a norm
SEED = 0
SPREAD_SEEDS = (1, 2)
WEIGHT_SPEC = "rtn:bits=4,group=128"
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
PERTURB_EPS = 2.0 ** -23  # one float32 ulp, relative: what another runtime's rounding of the same sums moves
PERTURB_SEEDS = (101, 102, 103)


class Perturbation:
    """Conditioning check: with a seed set, every quantizer's input (linear inputs, K and V) is
    multiplied by 1 + ε·u, u ~ U(−1, 1), before it is fake-quantized; how far the ppl then moves
    is how much of a reference-vs-engine difference float32 rounding alone can explain."""

    def __init__(self):
        self.gen: torch.Generator | None = None

    def start(self, seed: int | None):
        self.gen = None if seed is None else torch.Generator(device="cuda").manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.gen is None:
            return x
        u = torch.rand(x.shape, generator=self.gen, device=x.device, dtype=x.dtype) * 2 - 1
        return x * (1 + PERTURB_EPS * u)


PERTURB = Perturbation()


# ----------------------------------------------------------------------------- activations

def outlier_mask(x: torch.Tensor, k: int) -> torch.Tensor | None:
    """True at the k largest and k smallest entries of each row of x [rows, n]."""
    if k == 0:
        return None
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask.scatter_(1, x.topk(k, dim=1, largest=True).indices, True)
    mask.scatter_(1, x.topk(k, dim=1, largest=False).indices, True)
    return mask


def int_act(x: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    levels = 2 ** bits - 1
    m = outlier_mask(x, k)
    lo = (x if m is None else x.masked_fill(m, math.inf)).amin(1, keepdim=True)
    hi = (x if m is None else x.masked_fill(m, -math.inf)).amax(1, keepdim=True)
    step = ((hi - lo) / levels).clamp(min=TINY)
    deq = torch.clamp(torch.floor((x - lo) / step + 0.5), 0, levels) * step + lo
    return deq if m is None else torch.where(m, x, deq)


def token_norm(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    a = x.abs()
    return (a if m is None else a.masked_fill(m, 0.0)).amax(1, keepdim=True)


def kmeans_act(x: torch.Tensor, centroids: torch.Tensor, k: int) -> torch.Tensor:
    """centroids: float32 ascending on x's device."""
    m = outlier_mask(x, k)
    n = token_norm(x, m)
    u = x / n.clamp(min=TINY)
    mids = ((centroids[:-1].double() + centroids[1:].double()) / 2).float()
    code = torch.bucketize(u, mids, right=False)  # mids strictly below u: a value on a midpoint stays low
    deq = centroids[code] * n
    return deq if m is None else torch.where(m, x, deq)


def site_of(name: str) -> str:
    """Decoder linear weight name → the engine's capture point id of its input."""
    layer = int(name.split(".")[2])
    proj = name.split(".")[-2]
    site = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "o_in",
            "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}[proj]
    return f"L{layer}.{site}"


class ActHooks:
    """Forward pre-hooks on every decoder linear: fake-quantize its input (fn(x2d, site) → x̂2d)."""

    def __init__(self, model, fn):
        self.handles = []
        for name, lin in decoder_linears(model):
            site = site_of(name)

            def hook(_mod, args, site=site):
                x = args[0]
                return (fn(PERTURB(x.reshape(-1, x.shape[-1])), site).reshape(x.shape),) + tuple(args[1:])
            self.handles.append(lin.register_forward_pre_hook(hook))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def capture_linear_inputs(model, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw input [tokens, channels] of every capture point (one linear per point), float32 on the GPU."""
    out: dict[str, list] = {}
    hooks = []
    for name, lin in decoder_linears(model):
        if name.split(".")[-2] not in ("q_proj", "o_proj", "gate_proj", "down_proj"):
            continue
        site = site_of(name)

        def hook(_mod, args, site=site):
            out.setdefault(site, []).append(args[0].reshape(-1, args[0].shape[-1]).clone())
        hooks.append(lin.register_forward_pre_hook(hook))
    try:
        for b in range(0, windows.shape[0], 16):
            model(input_ids=windows[b:b + 16].cuda(), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in out.items()}


def fp16_points(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The codebook fit's data: non-outliers / token norm, rounded to fp16, as distinct values
    ascending (float64, CPU) with their counts. Tokens whose inliers are all 0 are dropped."""
    m = outlier_mask(x, k)
    n = token_norm(x, m)
    keep = n[:, 0] > 0
    u = (x / n.clamp(min=TINY))[keep]
    vals = u if m is None else u[~m[keep]]
    h = vals.half().float() + 0.0  # −0 → +0
    xs, counts = torch.unique(h, sorted=True, return_counts=True)
    return xs.double().cpu(), counts.double().cpu(), int(vals.numel())


def kmeans_pp(x: torch.Tensor, w: torch.Tensor, K: int, gen: torch.Generator) -> torch.Tensor:
    """scikit-learn's greedy weighted k-means++ over 1-D points."""
    trials = 2 + int(math.log(K))
    centres = torch.empty(K, dtype=x.dtype)
    centres[0] = x[torch.multinomial(w, 1, generator=gen)[0]]
    d2 = (x - centres[0]) ** 2
    for c in range(1, K):
        p = w * d2
        if not float(p.sum()) > 0:
            centres[c:] = centres[c - 1]
            break
        cand = torch.multinomial(p, trials, replacement=True, generator=gen)
        d2c = torch.minimum(d2[None, :], (x[None, :] - x[cand][:, None]) ** 2)  # [T, n]
        best = int((w[None, :] * d2c).sum(1).argmin())
        centres[c] = x[cand[best]]
        d2 = d2c[best]
    return centres


def kmeans_1d(x: torch.Tensor, w: torch.Tensor, K: int, seed: int) -> tuple[torch.Tensor, int]:
    """Weighted Lloyd from k-means++ (see the module docstring); x ascending, float64 CPU."""
    if x.numel() <= K:
        return torch.cat([x, x[-1:].expand(K - x.numel())]), 0
    gen = torch.Generator().manual_seed(seed)
    c = kmeans_pp(x, w, K, gen).sort().values
    mean = (w * x).sum() / w.sum()
    threshold = KMEANS_TOL * float((w * (x - mean) ** 2).sum() / w.sum())
    wx = w * x
    it = 0
    while it < KMEANS_MAX_ITER:
        it += 1
        a = torch.bucketize(x, (c[:-1] + c[1:]) / 2, right=False)  # on a midpoint: the lower centroid
        mass = torch.bincount(a, weights=w, minlength=K)
        sums = torch.bincount(a, weights=wx, minlength=K)
        new = torch.where(mass > 0, sums / mass.clamp(min=1e-300), c)
        shift = float(((new - c) ** 2).sum())
        c = new.sort().values
        if shift <= threshold:
            break
    return c, it


def fit_codebooks(raw: dict[str, torch.Tensor], bits: int, k: int, seed: int, info: dict) -> dict[str, torch.Tensor]:
    books = {}
    for site, x in raw.items():
        xs, ws, samples = fp16_points(x, k)
        c, it = kmeans_1d(xs, ws, 2 ** bits, seed)
        books[site] = c.float().cuda()
        info["maxIterations"] = max(info.get("maxIterations", 0), it)
        info["samples"] = info.get("samples", 0) + samples
    return books


# ----------------------------------------------------------------------------- KV cache

class KvState:
    """What the replacement attention does: KV settings, smoothing constants, range capture."""

    def __init__(self):
        self.bits: int | None = None
        self.past_only = False
        self.smooth: dict | None = None  # layer → (k_shift, k_scale, v_shift, v_scale), each [1, Hkv, 1, d]
        self.capture: dict | None = None  # layer → [kmin, kmax, vmin, vmax] [Hkv, d]
        self.calls = 0


KV = KvState()


def fake_quant_kv(x: torch.Tensor, bits: int, affine: tuple | None) -> torch.Tensor:
    """[b, Hkv, T, d] per (token, kv head) asymmetric min–max over d."""
    levels = 2 ** bits - 1
    v = (x - affine[0]) / affine[1] if affine else x
    lo, hi = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    step = ((hi - lo) / levels).clamp(min=TINY)
    out = torch.clamp(torch.floor((v - lo) / step + 0.5), 0, levels) * step + lo
    return out * affine[1] + affine[0] if affine else out


def quantscope_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Causal attention with optional KV fake quantization, replacing eager_attention_forward:
    query [b, H, T, d], key/value [b, Hkv, T, d] (K after RoPE), no cache, no padding."""
    KV.calls += 1
    layer = module.layer_idx
    b, H, T, d = query.shape
    Hkv = key.shape[1]
    assert key.shape[2] == T, "the reference attention runs without a cache"
    if KV.capture is not None:
        r = [key.amin((0, 2)), key.amax((0, 2)), value.amin((0, 2)), value.amax((0, 2))]
        if layer in KV.capture:
            old = KV.capture[layer]
            r = [torch.minimum(old[0], r[0]), torch.maximum(old[1], r[1]), torch.minimum(old[2], r[2]), torch.maximum(old[3], r[3])]
        KV.capture[layer] = r
    if KV.bits is not None:
        s = KV.smooth[layer] if KV.smooth else None
        kq = fake_quant_kv(PERTURB(key), KV.bits, (s[0], s[1]) if s else None)
        vq = fake_quant_kv(PERTURB(value), KV.bits, (s[2], s[3]) if s else None)
    else:
        kq, vq = key, value
    q5 = query.view(b, Hkv, H // Hkv, T, d)
    scores = torch.matmul(q5, kq[:, :, None].transpose(-1, -2)) * scaling  # [b, Hkv, G, T, T]
    idx = torch.arange(T, device=query.device)
    past_only = KV.bits is not None and KV.past_only
    if past_only:
        scores[..., idx, idx] = (q5 * key[:, :, None]).sum(-1) * scaling
    causal = torch.ones(T, T, dtype=torch.bool, device=query.device).triu(1)
    probs = torch.softmax(scores.masked_fill(causal, -math.inf), dim=-1)
    if past_only:
        p_own = probs[..., idx, idx].clone()
        probs[..., idx, idx] = 0
        ctx = torch.matmul(probs, vq[:, :, None]) + p_own[..., None] * value[:, :, None]
    else:
        ctx = torch.matmul(probs, vq[:, :, None])
    return ctx.reshape(b, H, T, d).transpose(1, 2).contiguous(), None


@torch.no_grad()
def calibrate_kv(model, windows: torch.Tensor, n_kv: int, head_dim: int) -> dict:
    KV.capture = {}
    try:
        for b in range(0, windows.shape[0], 16):
            model(input_ids=windows[b:b + 16].cuda(), use_cache=False)
        smooth = {}
        for layer, (kmin, kmax, vmin, vmax) in KV.capture.items():
            def affine(lo, hi):
                lo, hi = lo.double(), hi.double()
                half = (hi - lo) / 2
                shift = ((hi + lo) / 2).float().view(1, n_kv, 1, head_dim)
                scale = torch.where(half > 0, half, torch.ones_like(half)).float().view(1, n_kv, 1, head_dim)
                return shift, scale
            smooth[layer] = (*affine(kmin, kmax), *affine(vmin, vmax))
        return smooth
    finally:
        KV.capture = None


# ----------------------------------------------------------------------------- configs

def configs() -> list[dict]:
    """Every reference entry, named with the engine's CLI settings."""
    out = [dict(key="fp", quant=None, act=None, kv=None), dict(key="W4", quant=WEIGHT_SPEC, act=None, kv=None)]
    for w, bits in ((None, 4), (WEIGHT_SPEC, 8), (WEIGHT_SPEC, 4)):
        for kind in ("int", "kmeans"):
            for k in (0, 4):
                label = ("W4" if w else "") + f"A{bits}"
                out.append(dict(key=f"{label}-{kind}-k{k}", quant=w, act=f"{kind}:bits={bits},outliers={k}", kv=None,
                                actParams=dict(kind=kind, bits=bits, outliers=k)))
    for bits in (4, 3, 2):
        for smooth in (False, True):
            for past in (False, True):
                name = "smoothed+past-only" if smooth and past else "smoothed" if smooth else "past-only" if past else "naive"
                out.append(dict(key=f"KV{bits}-{name}", quant=None, act=None,
                                kv=dict(bits=bits, group=None, smooth=smooth, pastOnly=past)))
    return out


def set_weights(model, weights: dict):
    for name, lin in decoder_linears(model):
        lin.weight.data.copy_(weights[name])


def run(out: Path, smoke: bool, log=print) -> dict:
    t_start = time.time()
    log(f"fp32 switches: {set_exact_fp32()}")
    modeling_llama.eager_attention_forward = quantscope_attention
    reference = json.loads(REFERENCE_JSON.read_text())["models"]["default"]
    quant_ref = json.loads(QUANT_REFERENCE_JSON.read_text())["methods"]["rtn4_g128"]
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    heldout = token_windows(tok, read_heldout())
    calib_text = CALIBRATION_PATH.read_text(encoding="utf-8")
    calib = token_windows(tok, calib_text)[:CALIBRATION_WINDOWS]
    assert heldout.shape[0] == 388 and calib.shape[0] == CALIBRATION_WINDOWS, (heldout.shape, calib.shape)
    held_text = read_heldout()
    for i in range(0, len(calib_text) - 200, 100):  # never calibrate on the evaluated text
        assert calib_text[i:i + 200] not in held_text, f"calibration.txt at character {i} is in heldout.txt"
    seeds = (SEED,) if smoke else (SEED, *SPREAD_SEEDS)
    perturb_seeds = PERTURB_SEEDS[:1] if smoke else PERTURB_SEEDS
    if smoke:
        heldout, calib = heldout[:TEST_WINDOWS], calib[:4]

    model = load(LlamaForCausalLM, MODEL_DIR, torch.float32)
    cfg = model.config
    n_kv, head_dim = cfg.num_key_value_heads, cfg.head_dim
    originals = {n: lin.weight.detach().clone() for n, lin in decoder_linears(model)}
    w4 = {n: rtn_asym(w, 4, 128).to(w.dtype) for n, w in originals.items()}

    def measure(weights: dict, act_fn=None) -> np.ndarray:
        set_weights(model, weights)
        if act_fn is None:
            return window_nll(model, heldout)
        with ActHooks(model, act_fn):
            return window_nll(model, heldout)

    base = measure(originals)
    assert KV.calls > 0, "the replacement attention was not called (transformers changed its attention lookup?)"
    base_ppl = math.exp(float(base.mean()))
    log(f"fp32 baseline ppl {base_ppl:.5f} (reference.json {reference['ppl']['fp32']:.5f})")
    w4_ppl = math.exp(float(measure(w4).mean()))
    log(f"W4 {WEIGHT_SPEC} ppl {w4_ppl:.5f} (quant-reference.json rtn4_g128 {quant_ref['ppl']:.5f})")
    if not smoke:
        assert abs(base_ppl / reference["ppl"]["fp32"] - 1) < 1e-5, "baseline does not reproduce reference.json"
        assert abs(w4_ppl / quant_ref["ppl"] - 1) < 1e-5, "W4 does not reproduce quant-reference.json"

    # Calibration, all from the full-precision model.
    set_weights(model, originals)
    raw = capture_linear_inputs(model, calib)
    smoothing = calibrate_kv(model, calib, n_kv, head_dim)
    books: dict[tuple, dict] = {}
    fit_info: dict[tuple, dict] = {}
    t0 = time.time()
    for c in configs():
        p = c.get("actParams")
        if p and p["kind"] == "kmeans":
            for seed in seeds:
                key = (p["bits"], p["outliers"], seed)
                if key not in books:
                    fit_info[key] = {}
                    books[key] = fit_codebooks(raw, p["bits"], p["outliers"], seed, fit_info[key])
    log(f"codebooks fitted in {time.time() - t0:.1f} s: " + ", ".join(
        f"{b}b k{k} s{s}: iters ≤ {v['maxIterations']}" for (b, k, s), v in fit_info.items()))

    result = {
        "about": "Independent PyTorch fake-quant perplexities of the default model for activation (KLLM) and "
                 "KV-cache (WKVQuant) quantization, issue 12; definitions in the script's docstring",
        "generated_by": "resources/models/train/make_actkv_reference.py",
        "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "smoke": smoke,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__,
                     "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)},
        "model": "resources/models/default",
        "protocol": "make_reference.py's: resources/eval/heldout.txt, 256-token windows from an empty cache, float32, "
                    "TF32 off, NLL in float64; ppl = exp(mean NLL). ppl8 = the first 8 windows (the unit test's), "
                    "pplAll = all windows",
        "windows": int(heldout.shape[0]), "testWindows": TEST_WINDOWS, "ctx": 256,
        "calibration": {"file": "resources/eval/calibration.txt",
                        "sha256": hashlib.sha256(CALIBRATION_PATH.read_bytes()).hexdigest(),
                        "windows": int(calib.shape[0]), "tokens": int(calib.numel()),
                        "model": "full precision (no weight, activation or KV quantization)",
                        "uses": "k-means activation codebooks (raw linear inputs); KV smoothing ranges (K after RoPE, V)"},
        "weights": {"spec": WEIGHT_SPEC, "definition": " ".join(rtn_asym.__doc__.split())},
        "kmeans": {"init": "greedy weighted k-means++ (torch.Generator)", "maxIter": KMEANS_MAX_ITER, "tol": KMEANS_TOL,
                   "norm": "absmax-non-outlier", "data": "non-outliers / token absmax, rounded to fp16, counted per value",
                   "seed": SEED, "spreadSeeds": list(seeds[1:]),
                   "fits": {f"{b}b-k{k}-seed{s}": v for (b, k, s), v in fit_info.items()},
                   "codebooks4bit": {f"k{k}": {site: c.tolist() for site, c in books[(4, k, SEED)].items()}
                                     for k in (0, 4) if (4, k, SEED) in books}},
        "perturbation": {"eps": PERTURB_EPS, "seeds": list(perturb_seeds),
                         "definition": " ".join(Perturbation.__doc__.split()),
                         "applies_to": "every configuration with activation or KV quantization (pplPerturbed)"},
        "fp32": {"ppl": base_ppl, "reference_json_ppl": reference["ppl"]["fp32"]},
        "W4_check": {"ppl": w4_ppl, "quant_reference_json_ppl": quant_ref["ppl"]},
        "configs": {},
    }

    def entry(nll: np.ndarray) -> dict:
        return {"ppl8": math.exp(float(nll[:TEST_WINDOWS].mean())), "pplAll": math.exp(float(nll.mean())),
                "windowNll8": nll[:TEST_WINDOWS].tolist()}

    for c in configs():
        t0 = time.time()
        weights = w4 if c["quant"] else originals
        p = c.get("actParams")
        KV.bits, KV.past_only, KV.smooth = None, False, None
        if c["kv"]:
            KV.bits, KV.past_only = c["kv"]["bits"], c["kv"]["pastOnly"]
            KV.smooth = smoothing if c["kv"]["smooth"] else None
        def act_fn(seed: int):
            if p is None:
                return None
            if p["kind"] == "int":
                return lambda x, site: int_act(x, p["bits"], p["outliers"])
            bk = books[(p["bits"], p["outliers"], seed)]
            return lambda x, site: kmeans_act(x, bk[site], p["outliers"])
        try:
            e = entry(measure(weights, act_fn(SEED)))
            if p is not None and p["kind"] == "kmeans":
                runs = [e] + [entry(measure(weights, act_fn(seed))) for seed in seeds[1:]]
                e["pplSeeds"] = {"seeds": list(seeds), "ppl8": [r["ppl8"] for r in runs], "pplAll": [r["pplAll"] for r in runs]}
            if p is not None or c["kv"]:
                runs = []
                for ps in perturb_seeds:
                    PERTURB.start(ps)
                    try:
                        runs.append(entry(measure(weights, act_fn(SEED))))
                    finally:
                        PERTURB.start(None)
                e["pplPerturbed"] = {"eps": PERTURB_EPS, "seeds": list(perturb_seeds),
                                     "ppl8": [r["ppl8"] for r in runs], "pplAll": [r["pplAll"] for r in runs]}
        finally:
            KV.bits, KV.past_only, KV.smooth = None, False, None
        result["configs"][c["key"]] = {"quant": c["quant"], "act": c["act"], "kv": c["kv"], **e}
        seeds_txt = ""
        if "pplSeeds" in e:
            seeds_txt = f"  seeds ppl8 {min(e['pplSeeds']['ppl8']):.4f}–{max(e['pplSeeds']['ppl8']):.4f} " \
                        f"all {min(e['pplSeeds']['pplAll']):.4f}–{max(e['pplSeeds']['pplAll']):.4f}"
        if "pplPerturbed" in e:
            q = e["pplPerturbed"]
            seeds_txt += f"  perturbed ppl8 {min(q['ppl8']):.4f}–{max(q['ppl8']):.4f} all {min(q['pplAll']):.4f}–{max(q['pplAll']):.4f}"
        log(f"{c['key']:24s} ppl8 {e['ppl8']:9.4f}  pplAll {e['pplAll']:9.4f}  {time.time() - t0:5.1f}s{seeds_txt}")
        result["seconds"] = round(time.time() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")  # partial results survive a crash
    log(f"wrote {out} in {result['seconds']} s")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--smoke", action="store_true", help="8 held-out windows, 4 calibration windows, one seed, no reproduction asserts")
    a = ap.parse_args()
    run(a.out.resolve(), a.smoke)
