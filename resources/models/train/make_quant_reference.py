#!/usr/bin/env python3
"""Independent PyTorch reference perplexities for Quantscope's weight quantizers (issue 9).

    python3 resources/models/train/make_quant_reference.py [--out FILE] [--smoke]

Fake-quantizes every decoder linear weight (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj;
not embeddings, lm_head or norms) of resources/models/default with one method at a time,
writes the dequantised float32 weights into the float32 model and measures held-out
perplexity with make_reference.py's protocol (388 windows of 256 tokens, float32, TF32 off,
NLL in float64). Results: test/fixtures/reference/quant-reference.json.

Calibration (never the evaluated text):
- any4/any3: x̄ = mean over the tokens of resources/eval/any4-prompt.txt (one sequence) of each
  linear's *signed* input, from the full-precision model (the "fast mode" of the any4 recipe:
  earlier layers are not quantized when x̄ is taken).
- GPTQ/AWQ: each linear's inputs from the FULL-PRECISION model over the 256-token windows of
  resources/eval/calibration.txt (training-corpus text): Σ xᵀx and mean |x|. This is the
  non-sequential variant: the reference GPTQ/AWQ feed layer l the outputs of the already
  quantized layers 0..l-1; here every layer sees full-precision inputs, which is what a
  quantizer given one captured XᵀX per layer (the TS engine) can reproduce.

One function per method below; each takes a float32 [out, in] weight on the GPU and returns
the dequantised float32 weight, computed from the values the format stores (fp16 scales,
minima, tables, outliers). Storage rules: storage_bytes().
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_tokenizer import HELDOUT_PATH, REPO_ROOT, encode_text, read_heldout  # noqa: E402
from make_reference import WINDOW, decoder_linears, load, rtn_int4, set_exact_fp32, window_nll  # noqa: E402

MODEL_DIR = REPO_ROOT / "resources" / "models" / "default"
CALIBRATION_PATH = REPO_ROOT / "resources" / "eval" / "calibration.txt"
PROMPT_PATH = REPO_ROOT / "resources" / "eval" / "any4-prompt.txt"
REFERENCE_JSON = REPO_ROOT / "test" / "fixtures" / "reference" / "reference.json"
OUT_JSON = REPO_ROOT / "test" / "fixtures" / "reference" / "quant-reference.json"
MIN_CALIBRATION_WINDOWS = 64
SEED = 0
SPREAD_SEEDS = (1, 2, 3, 4)  # k-means methods are re-run with these seeds: how much of a ppl is the seed
NF4_VALUES = [  # bitsandbytes functional.py get_4bit_type('nf4')
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0]
E2M1_MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # OCP MX v1.0 FP4 E2M1


def f16(x: torch.Tensor) -> torch.Tensor:
    """The value an fp16 store keeps, back in x's dtype."""
    return x.to(torch.float16).to(x.dtype)


def grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    rows, cols = w.shape
    assert cols % group == 0, (tuple(w.shape), group)
    return w.reshape(rows, cols // group, group)


# ----------------------------------------------------------------------------- scalar grids

def rtn_asym(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Asymmetric RTN with the fp16-stored scale and minimum: s = fp16((M − m)/(2^b − 1)),
    m = fp16(min); q = clamp(floor((w − m)/s + 0.5), 0, 2^b − 1); ŵ = q·s + m. On the CPU in
    float32, one rounding per operation, as make_reference.rtn_int4 (which keeps s, m in fp32)."""
    qmax = 2 ** bits - 1
    x = grouped(w.detach().to("cpu", torch.float32), group)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = f16((hi - lo) / qmax)
    lo = f16(lo)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant group → ŵ = m
    q = torch.clamp(torch.floor((x - lo) / scale + 0.5), 0, qmax)
    deq = q * scale
    return (deq + lo).reshape(w.shape).to(w.device)


def absmax_table(w: torch.Tensor, group: int, levels: list[float], even_mantissa_ties: bool) -> torch.Tensor:
    """Absmax blocks onto a fixed table: s = fp16(absmax / max|table|); code = the table value
    nearest to w/s (float32, against the stored s); ŵ = table[code]·s. Ties: the lower value
    (NF4, bitsandbytes' decision tree) or the even E2M1 code, i.e. even magnitude index (FP4)."""
    lv = torch.tensor(sorted(set(levels)), dtype=torch.float32, device=w.device)
    x = grouped(w.float(), group)
    s = f16(x.abs().amax(-1, keepdim=True) / lv.abs().max())
    v = x / torch.where(s > 0, s, torch.ones_like(s))
    d = (v[..., None] - lv).abs()
    idx = d.argmin(-1)  # first minimum = the lower value on a tie
    if even_mantissa_ties:
        mags = torch.tensor([E2M1_MAGNITUDES.index(abs(float(t))) for t in lv.tolist()], device=w.device)
        up = (idx + 1).clamp(max=lv.numel() - 1)
        tie = (d.gather(-1, up[..., None]) == d.gather(-1, idx[..., None]))[..., 0] & (up != idx)
        idx = torch.where(tie & (mags[idx] % 2 == 1), up, idx)
    return (lv[idx] * s).reshape(w.shape)


def nf4(w: torch.Tensor, group: int = 64) -> torch.Tensor:
    return absmax_table(w, group, NF4_VALUES, even_mantissa_ties=False)


def fp4(w: torch.Tensor, group: int = 128) -> torch.Tensor:
    return absmax_table(w, group, E2M1_MAGNITUDES + [-m for m in E2M1_MAGNITUDES], even_mantissa_ties=True)


# ----------------------------------------------------------------------------- k-means

@torch.no_grad()
def kmeans_rows(x: torch.Tensor, s: torch.Tensor, k: int, seed: int, max_iter: int = 300,
                tol: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Weighted 1-D k-means of every row of x [R, n] at once (float64), sample weights s ≥ 0.
    Init: scikit-learn's greedy k-means++ with sample weights (first centre ∝ s; then 2 + ⌊ln k⌋
    candidates ∝ s·D², keep the one with the least Σ s·D²), torch generator seeded `seed`.
    Lloyd: nearest centroid (a tie goes to the lower one), centroid = Σ s·x / Σ s, an empty
    cluster keeps its centroid; a row stops once Σ(c' − c)² ≤ tol · weighted variance of the row
    or after max_iter. Returns centroids [R, k] ascending and the iterations of the slowest row."""
    x, s = x.double(), s.double()
    s = torch.where(s.sum(1, keepdim=True) > 0, s, torch.ones_like(s))  # weightless row → s = 1
    gen = torch.Generator(device=x.device).manual_seed(seed)
    rows = torch.arange(x.shape[0], device=x.device)
    centres = torch.empty(x.shape[0], k, dtype=x.dtype, device=x.device)
    centres[:, 0] = x.gather(1, torch.multinomial(s, 1, generator=gen))[:, 0]
    d2 = (x - centres[:, :1]) ** 2
    trials = 2 + int(math.log(k))
    for c in range(1, k):
        p = s * d2
        p = torch.where(p.sum(1, keepdim=True) > 0, p, s)  # all points already on a centre
        cand = x.gather(1, torch.multinomial(p, trials, replacement=True, generator=gen))  # [R, T]
        d2c = torch.minimum(d2[:, None, :], (x[:, None, :] - cand[:, :, None]) ** 2)  # [R, T, n]
        best = (s[:, None, :] * d2c).sum(-1).argmin(1)
        centres[:, c] = cand[rows, best]
        d2 = d2c[rows, best]
    centres = centres.sort(1).values
    mean = (s * x).sum(1, keepdim=True) / s.sum(1, keepdim=True)
    threshold = tol * (s * (x - mean) ** 2).sum(1) / s.sum(1)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    it = 0
    while it < max_iter and bool(active.any()):
        it += 1
        a = (x[:, :, None] - centres[:, None, :]).abs().argmin(-1)
        # one-hot sums, not scatter_add_: CUDA atomics add in a varying order (not reproducible)
        member = (a[..., None] == torch.arange(k, device=x.device)).to(x.dtype)  # [R, n, k]
        sums = (member * (s * x)[..., None]).sum(1)
        mass = (member * s[..., None]).sum(1)
        new = torch.where(mass > 0, sums / mass.clamp(min=1e-300), centres).sort(1).values
        shift = ((new - centres) ** 2).sum(1)
        centres = torch.where(active[:, None], new, centres)
        active &= shift > threshold
    return centres, it


def nearest_of(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each x [..., n] replaced by its nearest entry of levels [..., L] (ascending; tie → lower)."""
    return levels.gather(-1, (x[..., None] - levels[..., None, :]).abs().argmin(-1))


def any_n(w: torch.Tensor, bits: int, group: int, weighting: str, xbar: torch.Tensor | None,
          info: dict) -> torch.Tensor:
    """anyN (shared/papers.md §1): per row i and group G, m = min, α = max(M − m, 1e-6)/(2ⁿ − 1),
    w_S = (w − m)/α not rounded; weighted k-means of each row's w_S into 2ⁿ values with sample
    weights 1 | |x̄_j| | |x̄_j·α_i,G(j)|; LUT, α and m stored fp16; each weight takes the stored
    level LUT[q]·α + m nearest to it."""
    k = 2 ** bits
    x = grouped(w.double(), group)
    lo = x.amin(-1, keepdim=True)
    alpha = (x.amax(-1, keepdim=True) - lo).clamp(min=1e-6) / (k - 1)
    ws = ((x - lo) / alpha).reshape(w.shape)
    if weighting == "weights":
        s = torch.ones_like(ws)
    else:
        s = xbar.double().abs()[None, :].expand_as(ws)
        if weighting == "activations-scale":
            s = s * alpha.expand_as(x).reshape(w.shape)
    lut, it = kmeans_rows(ws, s, k, info.get("seed", SEED))
    info["max_iterations"] = max(info.get("max_iterations", 0), it)
    lut16 = f16(lut).float()  # [R, k]
    levels = (lut16[:, None, :] * f16(alpha).float()) + f16(lo).float()  # [R, groups, k]
    return nearest_of(grouped(w.float(), group), levels).reshape(w.shape)


def kmeans_kllm(w: torch.Tensor, bits: int, outliers: float, info: dict) -> torch.Tensor:
    """KLLM k-means: one codebook of 2^b fp16 values per output row from unweighted k-means of
    the raw weights; with outliers, the ⌈fraction·cols⌉ largest |w| of each row (ties: lower
    column) are kept exactly as fp16 and left out of the clustering."""
    n_out = min(w.shape[1], math.ceil(outliers * w.shape[1] - 1e-9))
    s = torch.ones_like(w, dtype=torch.float64)
    idx = torch.argsort(-w.abs(), dim=1, stable=True)[:, :n_out]
    s.scatter_(1, idx, 0.0)
    book, it = kmeans_rows(w.double(), s, 2 ** bits, info.get("seed", SEED))
    info["max_iterations"] = max(info.get("max_iterations", 0), it)
    deq = nearest_of(w.float(), f16(book).float())
    return deq.scatter(1, idx, f16(w.float().gather(1, idx)))


# ----------------------------------------------------------------------------- calibrated grids

def gptq_grid(x: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IST-DASLab quant.py Quantizer.find_params (asymmetric, per row of x): the range always
    includes 0; an all-zero range becomes [−1, 1]; scale stored as fp16, zero = round(−xmin/s)."""
    xmin = x.amin(1).clamp(max=0)
    xmax = x.amax(1).clamp(min=0)
    dead = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(dead, -1.0, xmin), torch.where(dead, 1.0, xmax)
    scale = f16((xmax - xmin) / maxq)
    return scale, torch.round(-xmin / scale)


def gptq(w: torch.Tensor, gram: torch.Tensor, tokens: int, bits: int, group: int = 128,
         blocksize: int = 128, damp: float = 0.01) -> torch.Tensor:
    """GPTQ as IST-DASLab gptq.py fasterquant (no act-order), in float64: H = 2·XᵀX/tokens,
    dead inputs get H_jj = 1 and a zero column, H += damp·mean(diag H)·I, U = chol(H⁻¹) upper;
    columns in order, each error/U_jj spread along U's row, lazy updates per block; a group's
    grid is fitted from the updated weights when its first column is reached."""
    assert blocksize % group == 0 and w.shape[1] % blocksize == 0
    maxq = 2 ** bits - 1
    W = w.double().clone()
    H = 2 * gram.double() / tokens
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, W.shape[1], blocksize):
        i2 = i1 + blocksize
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        err = torch.zeros_like(W1)
        for i in range(blocksize):
            if (i1 + i) % group == 0:
                scale, zero = gptq_grid(W1[:, i:i + group], maxq)
            col = W1[:, i]
            q = scale * (torch.clamp(torch.round(col / scale) + zero, 0, maxq) - zero)
            Q[:, i1 + i] = q
            e = (col - q) / U1[i, i]
            W1[:, i:] -= e[:, None] * U1[i, i:][None, :]
            err[:, i] = e
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return Q.float()


def awq_fake_quant(x: torch.Tensor, bits: int, group: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """llm-awq quantizer.py pseudo_quantize_tensor (asymmetric), optionally clamped to ±clip per
    group first (auto_clip): s = fp16(max(M − m, 1e-5)/maxq), z = clamp(−round(m/s), 0, maxq)."""
    maxq = 2 ** bits - 1
    g = grouped(x, group)
    if clip is not None:
        g = torch.maximum(torch.minimum(g, clip), -clip)
    hi, lo = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
    scale = f16((hi - lo).clamp(min=1e-5) / maxq)
    zero = torch.clamp(-torch.round(lo / scale), 0, maxq)
    return ((torch.clamp(torch.round(g / scale) + zero, 0, maxq) - zero) * scale).reshape(x.shape)


def awq(w: torch.Tensor, mean_abs: torch.Tensor, gram: torch.Tensor, bits: int, group: int,
        info: dict) -> torch.Tensor:
    """AWQ (llm-awq auto_scale + auto_clip), per layer, scored by the exact output error on the
    calibration tokens tr(E·G·Eᵀ), G = Σ xᵀx: s = mean|x|^α (≥ 1e-4) / √(max·min), stored fp16,
    α ∈ {0, 1/20, …, 19/20}; then per (row, group) of W·diag(s) the clip max|w|·(1 − i/20),
    i = 0…9, by the group's error e·G_gg·eᵀ; ŵ = deq(Q(clip(W·diag(s))))/s."""
    W, G = w.double(), gram.double()
    errors = []
    for a in range(20):
        s = mean_abs.double().pow(a / 20).clamp(min=1e-4)
        s = f16(s / torch.sqrt(s.max() * s.min()))
        e = awq_fake_quant(W * s, bits, group) / s - W
        errors.append(float(((e @ G) * e).sum()))
    alpha = errors.index(min(errors)) / 20
    s = mean_abs.double().pow(alpha).clamp(min=1e-4)
    s = f16(s / torch.sqrt(s.max() * s.min()))
    info.setdefault("alpha", []).append(alpha)
    ws = W * s
    n_groups = w.shape[1] // group
    G_blocks = torch.stack([G[j * group:(j + 1) * group, j * group:(j + 1) * group] for j in range(n_groups)])
    org_max = grouped(ws, group).abs().amax(-1, keepdim=True)
    best_err = torch.full(org_max.shape, math.inf, dtype=W.dtype, device=W.device)
    best = torch.zeros_like(ws)
    for i in range(10):
        q = awq_fake_quant(ws, bits, group, org_max * (1 - i / 20)) / s
        e = grouped(q - W, group)
        err = torch.einsum("rja,jab,rjb->rj", e, G_blocks, e)[..., None]
        take = err < best_err
        best_err = torch.where(take, err, best_err)
        best = torch.where(take, grouped(q, group), grouped(best, group)).reshape(ws.shape)
    return best.float()


# ----------------------------------------------------------------------------- storage

def storage_bytes(method: str, bits: int, group: int, rows: int, cols: int, outliers: float = 0.0) -> dict:
    """Exact bytes of one [rows, cols] tensor: codes packed contiguously (⌈rows·cols·bits/8⌉),
    fp16 scales/minima/tables/outlier values, integer zero points packed at `bits` bits,
    outlier column indices uint16 (cols ≤ 65536)."""
    groups = rows * (cols // group) if group else 0
    out = {"codes": math.ceil(rows * cols * bits / 8), "scales": 0, "zeros": 0, "tables": 0, "outliers": 0}
    if method == "rtn":
        out["scales"] = groups * 4  # fp16 scale + fp16 minimum
    elif method in ("nf4", "fp4"):
        out["scales"] = groups * 2  # fp16 absmax scale
    elif method == "anyn":
        out["scales"] = groups * 4  # fp16 α + fp16 m
        out["tables"] = rows * 2 ** bits * 2
    elif method == "kmeans":
        out["tables"] = rows * 2 ** bits * 2
        out["outliers"] = rows * min(cols, math.ceil(outliers * cols - 1e-9)) * (2 + 2)
    elif method in ("gptq", "awq"):
        out["scales"] = groups * 2 + (cols * 2 if method == "awq" else 0)  # AWQ: fp16 s per input column
        out["zeros"] = math.ceil(groups * bits / 8)
    else:
        raise ValueError(method)
    return out


# ----------------------------------------------------------------------------- calibration capture

@torch.no_grad()
def capture_inputs(model, windows: torch.Tensor, gram: bool) -> dict:
    """Per decoder linear: token count, mean signed input x̄, mean |x| and (gram) Σ xᵀx, all float64,
    from the model as it is (full precision when called)."""
    stats, hooks = {}, []
    for name, lin in decoder_linears(model):
        k = lin.in_features
        st = stats[name] = {"count": 0, "sum": torch.zeros(k, dtype=torch.float64, device="cuda"),
                            "sum_abs": torch.zeros(k, dtype=torch.float64, device="cuda")}
        if gram:
            st["gram"] = torch.zeros(k, k, dtype=torch.float64, device="cuda")

        def hook(_mod, args, st=st):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            st["count"] += x.shape[0]
            st["sum"] += x.sum(0)
            st["sum_abs"] += x.abs().sum(0)
            if "gram" in st:
                st["gram"] += x.T @ x
        hooks.append(lin.register_forward_pre_hook(hook))
    try:
        for b in range(0, windows.shape[0], 16):
            model(input_ids=windows[b:b + 16].cuda(), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    for st in stats.values():
        st["mean"] = st["sum"] / st["count"]
        st["mean_abs"] = st["sum_abs"] / st["count"]
    return stats


def token_windows(tok: Tokenizer, text: str) -> torch.Tensor:
    ids = encode_text(tok, text)
    n = len(ids) // WINDOW
    return torch.tensor(ids[: n * WINDOW], dtype=torch.long).view(n, WINDOW)


# ----------------------------------------------------------------------------- the methods

def methods() -> list[dict]:
    """Every reference entry: key, TS CLI spec, storage rule (method, bits, group, outliers),
    the quantizer as a function of (weight, name, calibration, info), and its definition."""
    out = []
    for b in (4, 3):
        out.append(dict(key=f"rtn{b}_g128", spec=f"rtn:bits={b},group=128,sym=false", store=("rtn", b, 128, 0),
                        fn=lambda w, n, c, i, b=b: rtn_asym(w, b, 128), doc=rtn_asym.__doc__))
    out.append(dict(key="nf4_g64", spec="nf4:group=64", store=("nf4", 4, 64, 0),
                    fn=lambda w, n, c, i: nf4(w, 64), doc=absmax_table.__doc__ + " NF4: bitsandbytes' table."))
    out.append(dict(key="fp4_g128", spec="fp4:group=128", store=("fp4", 4, 128, 0),
                    fn=lambda w, n, c, i: fp4(w, 128), doc=absmax_table.__doc__ + " FP4: E2M1 ±{0,.5,1,1.5,2,3,4,6}."))
    for weighting in ("weights", "activations", "activations-scale"):
        out.append(dict(key=f"any4_g128_{weighting}", spec=f"any4:group=128,weighting={weighting}",
                        store=("anyn", 4, 128, 0), doc=any_n.__doc__,
                        fn=lambda w, n, c, i, wt=weighting: any_n(w, 4, 128, wt, c["prompt"][n]["mean"], i)))
    out.append(dict(key="any3_g128_activations-scale", spec="any3:group=128", store=("anyn", 3, 128, 0),
                    doc=any_n.__doc__, fn=lambda w, n, c, i: any_n(w, 3, 128, "activations-scale", c["prompt"][n]["mean"], i)))
    for b in (4, 3):
        for frac in (0.0, 0.005):
            spec = f"kmeans:bits={b},per=row" + (f",outliers={frac}" if frac else "")
            out.append(dict(key=f"kmeans{b}_row" + ("_outliers0.005" if frac else ""), spec=spec,
                            store=("kmeans", b, 0, frac), doc=kmeans_kllm.__doc__,
                            fn=lambda w, n, c, i, b=b, f=frac: kmeans_kllm(w, b, f, i)))
    for b in (4, 3):
        out.append(dict(key=f"gptq{b}_g128", spec=f"gptq:bits={b},group=128", store=("gptq", b, 128, 0), doc=gptq.__doc__,
                        fn=lambda w, n, c, i, b=b: gptq(w, c["calib"][n]["gram"], c["calib"][n]["count"], b, 128)))
    for b in (4, 3):
        out.append(dict(key=f"awq{b}_g128", spec=f"awq:bits={b},group=128", store=("awq", b, 128, 0), doc=awq.__doc__,
                        fn=lambda w, n, c, i, b=b: awq(w, c["calib"][n]["mean_abs"], c["calib"][n]["gram"], b, 128, i)))
    for m in out:
        m["calibration"] = {"rtn": "none", "nf4": "none", "fp4": "none", "kmeans": "none",
                            "anyn": "any4-prompt.txt x̄ (fast mode)" if "weighting=weights" not in m["spec"] else "none",
                            "gptq": "calibration.txt Σ xᵀx of the full-precision model (non-sequential)",
                            "awq": "calibration.txt Σ xᵀx and mean |x| of the full-precision model (non-sequential)",
                            }[m["store"][0]]
    return out


def bits_per_weight(store: tuple, shapes: dict) -> tuple[float, dict]:
    method, bits, group, outliers = store
    total = {"codes": 0, "scales": 0, "zeros": 0, "tables": 0, "outliers": 0}
    for rows, cols in shapes.values():
        for k, v in storage_bytes(method, bits, group, rows, cols, outliers).items():
            total[k] += v
    weights = sum(r * c for r, c in shapes.values())
    return 8 * sum(total.values()) / weights, total


def evaluate_with(model, originals: dict, replace: dict, windows: torch.Tensor) -> np.ndarray:
    try:
        for name, lin in decoder_linears(model):
            if name in replace:
                lin.weight.data.copy_(replace[name])
        return window_nll(model, windows)
    finally:
        for name, lin in decoder_linears(model):
            lin.weight.data.copy_(originals[name])


def run(out: Path, smoke: bool, log=print) -> dict:
    t_start = time.time()
    log(f"fp32 switches: {set_exact_fp32()}")
    reference = json.loads(REFERENCE_JSON.read_text())["models"]["default"]
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    heldout = token_windows(tok, read_heldout())
    calib_text = CALIBRATION_PATH.read_text(encoding="utf-8")
    calib = token_windows(tok, calib_text)
    prompt_text = PROMPT_PATH.read_text(encoding="utf-8")
    prompt = torch.tensor([encode_text(tok, prompt_text)], dtype=torch.long)
    assert heldout.shape[0] == 388 and calib.shape[0] >= MIN_CALIBRATION_WINDOWS, (heldout.shape, calib.shape)
    assert prompt.shape[1] <= WINDOW, prompt.shape
    held_text = read_heldout()
    for i in range(0, len(calib_text) - 200, 100):  # never calibrate on the evaluated text
        assert calib_text[i:i + 200] not in held_text, f"calibration.txt at character {i} is in heldout.txt"
    if smoke:
        heldout, calib = heldout[:8], calib[:8]

    model = load(LlamaForCausalLM, MODEL_DIR, torch.float32)
    originals = {n: lin.weight.detach().clone() for n, lin in decoder_linears(model)}
    shapes = {n: tuple(w.shape) for n, w in originals.items()}
    base = window_nll(model, heldout)
    base_ppl = math.exp(float(base.mean()))
    log(f"fp32 baseline ppl {base_ppl:.5f} (reference.json {reference['ppl']['fp32']:.5f})")
    if not smoke:
        assert abs(base_ppl / reference["ppl"]["fp32"] - 1) < 1e-6, "baseline does not reproduce reference.json"
    planned = {n: w for n, w in originals.items() if not smoke or n.startswith("model.layers.0.")}
    cal = {"prompt": capture_inputs(model, prompt, gram=False), "calib": capture_inputs(model, calib, gram=True)}

    rtn_fp32 = {n: rtn_int4(w, 128)[0].to(w.device) for n, w in originals.items()}
    rtn_fp32_nll = evaluate_with(model, originals, rtn_fp32, heldout)
    rtn_fp32_ppl = math.exp(float(rtn_fp32_nll.mean()))
    log(f"int4 RTN g128 with fp32 scale/min (make_reference.rtn_int4): ppl {rtn_fp32_ppl:.5f} "
        f"(reference.json {reference['ppl']['int4_rtn_g128']:.5f})")
    if not smoke:
        assert abs(rtn_fp32_ppl / reference["ppl"]["int4_rtn_g128"] - 1) < 1e-5

    result = {
        "about": "Independent PyTorch fake-quant perplexities of the default model for Quantscope's "
                 "quantizers (issue 9); see resources/models/train/README.md",
        "generated_by": "resources/models/train/make_quant_reference.py",
        "smoke": smoke,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__,
                     "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)},
        "model": "resources/models/default",
        "applies_to": "every decoder linear weight: model.layers.*.self_attn.{q,k,v,o}_proj.weight and "
                      "model.layers.*.mlp.{gate,up,down}_proj.weight; embeddings, lm_head and norms as stored",
        "protocol": "make_reference.py's: resources/eval/heldout.txt, 256-token windows from an empty cache, "
                    "float32 model with the dequantised float32 weights, TF32 off, NLL in float64; ppl = exp(mean NLL)",
        "calibration": {
            "any4": {"file": "resources/eval/any4-prompt.txt", "tokens": int(prompt.shape[1]),
                     "statistic": "x̄ = mean over the prompt's tokens of each linear's signed input, full-precision "
                                  "model (fast mode: earlier layers not quantized)"},
            "gptq_awq": {"file": "resources/eval/calibration.txt",
                         "sha256": hashlib.sha256(CALIBRATION_PATH.read_bytes()).hexdigest(),
                         "windows": int(calib.shape[0]), "tokens": int(calib.numel()),
                         "statistic": "Σ xᵀx and mean |x| of each linear's inputs from the FULL-PRECISION model "
                                      "(non-sequential: the reference GPTQ/AWQ use the quantized earlier layers)"},
        },
        "seed": SEED, "spread_seeds": list(SPREAD_SEEDS),
        "storage_rule": "codes packed contiguously over the tensor (ceil(rows·cols·bits/8) bytes); scales, minima, "
                        "LUTs, codebooks and outlier values fp16; integer zero points (GPTQ, AWQ) packed at `bits` bits "
                        "(ceil(groups·bits/8)); outlier column indices uint16; AWQ also stores s as fp16 per input "
                        "column (real AWQ folds it into the previous op). bitsPerWeight = 8·bytes / decoder linear weights",
        "decoder_linear_weights": sum(r * c for r, c in shapes.values()),
        "windows": int(heldout.shape[0]),
        "fp32": {"ppl": base_ppl, "nll": float(base.mean()), "reference_json_ppl": reference["ppl"]["fp32"]},
        "int4_rtn_g128_fp32_params": {
            "ppl": rtn_fp32_ppl, "nll": float(rtn_fp32_nll.mean()),
            "reference_json_ppl": reference["ppl"]["int4_rtn_g128"],
            "note": "make_reference.rtn_int4: scale and minimum kept in float32 (not stored as fp16); "
                    "the 'rtn4_g128' method below rounds both to fp16 as the TS quantizer stores them"},
        "methods": {},
    }
    def quantize_all(m: dict, info: dict) -> dict:
        deq = {}
        for name, w in planned.items():
            deq[name] = m["fn"](w, name, cal, info).to(w.dtype)
            assert deq[name].shape == w.shape and torch.isfinite(deq[name]).all(), (m["key"], name)
        torch.cuda.synchronize()
        return deq

    for m in methods():
        t0, info = time.time(), {}
        deq = quantize_all(m, info)
        seconds_quant = time.time() - t0
        nll = evaluate_with(model, originals, deq, heldout)
        bpw, storage = bits_per_weight(m["store"], shapes)
        mse = sum(float(((deq[n].double() - w.double()) ** 2).sum()) for n, w in planned.items()) \
            / sum(w.numel() for w in planned.values())
        entry = {"spec": m["spec"], "ppl": math.exp(float(nll.mean())), "nll": float(nll.mean()),
                 "windows": int(nll.shape[0]), "bitsPerWeight": bpw, "storageBytes": storage,
                 "weightMse": mse, "windowNllFirst16": nll[:16].tolist(),
                 "secondsQuantize": round(seconds_quant, 2), "calibration": m["calibration"],
                 "definition": " ".join(m["doc"].split())}
        if "max_iterations" in info:
            entry["kmeansMaxIterations"] = info["max_iterations"]
            entry["pplOtherSeeds"] = {}
            for seed in SPREAD_SEEDS:
                other = evaluate_with(model, originals, quantize_all(m, {"seed": seed}), heldout)
                entry["pplOtherSeeds"][str(seed)] = math.exp(float(other.mean()))
            every = [entry["ppl"], *entry["pplOtherSeeds"].values()]
            entry["pplSeeds"] = {"mean": float(np.mean(every)), "min": min(every), "max": max(every),
                                 "seeds": [SEED, *SPREAD_SEEDS]}
        if "alpha" in info:
            entry["awqAlpha"] = dict(zip(planned, info["alpha"]))
        result["methods"][m["key"]] = entry
        log(f"{m['key']:32s} {m['spec']:44s} ppl {entry['ppl']:9.4f}  bpw {bpw:.4f}  mse {mse:.3e}  "
            f"{seconds_quant:.1f}s" + (f"  iters {info['max_iterations']}  other seeds "
                                       + " ".join(f"{v:.4f}" for v in entry["pplOtherSeeds"].values())
                                       if "max_iterations" in info else ""))
        result["seconds"] = round(time.time() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")  # partial results survive a crash
    log(f"wrote {out} in {result['seconds']} s")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--smoke", action="store_true", help="8 windows, layer 0 only, no reproduction asserts (a quick check of every code path)")
    a = ap.parse_args()
    run(a.out.resolve(), a.smoke)
