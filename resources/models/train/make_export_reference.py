#!/usr/bin/env python3
"""Independent numbers for Quantscope's export and ONNX-input tests, computed on the GPU machine
with PyTorch, Hugging Face transformers and onnxruntime (Python):

    python3 resources/models/train/make_export_reference.py --exports DIR [DIR ...] [--smoke]

1. Dequantised exports (`quantscope export MODEL --quant SPEC --format safetensors --dtype fp32`):
   transformers loads each exported folder as it would any checkpoint and computes its
   perplexity on the held-out text with the protocol of make_reference.py (256-token windows
   from an empty cache, float32, eager attention, TF32 off, NLL in float64). The tests check
   that Quantscope's in-app figure for the same plan is within 0.1% of this one.
   Written to test/fixtures/reference/export-reference.json.

2. An HF-style ONNX decoder of resources/models/qwen2-tiny made by torch.onnx.export, with the
   input and output names of Hugging Face's ONNX tooling (input_ids, attention_mask,
   position_ids, past_key_values.N.key/value -> logits, present.N.key/value), as a model
   exported by *other* tooling that Quantscope must open and evaluate. The exported module
   is a plain PyTorch decoder checked here against transformers' logits; onnxruntime (Python,
   CPU) then runs the file, with and without a KV cache, against PyTorch, and its window NLLs
   are stored. Written to test/fixtures/onnx-decoder/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_tokenizer import HELDOUT_PATH, REPO_ROOT, encode_text, read_heldout  # noqa: E402
from make_reference import PROMPTS, WINDOW, set_exact_fp32, window_nll  # noqa: E402


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def heldout_windows(tokenizer_json: Path) -> torch.Tensor:
    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = encode_text(tok, read_heldout())
    n = len(ids) // WINDOW
    return torch.tensor(ids[: n * WINDOW], dtype=torch.long).view(n, WINDOW)


@torch.no_grad()
def dequantised_export_reference(folder: Path, windows: torch.Tensor) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                                 local_files_only=True).cuda().eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    nll = window_nll(model, windows)
    report_file = folder.parent / f"{folder.name}.report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    weights = sorted(folder.glob("*.safetensors"))
    entry = {
        "export": folder.name,
        "model": report.get("model", {}).get("path", "").split("/resources/")[-1],
        "plan_source": report.get("plan", {}).get("source"),
        "architecture": type(model).__name__,
        "files_sha256": {p.name: sha256(p) for p in weights},
        "windows": int(windows.shape[0]),
        "mean_nll": float(nll.mean()),
        "ppl": math.exp(float(nll.mean())),
        "window_nll_prefix": nll[:16].tolist(),
    }
    del model
    torch.cuda.empty_cache()
    return entry


# ---------------------------------------------------------------- the HF-style ONNX decoder

class PlainDecoder(torch.nn.Module):
    """A llama/qwen2 decoder written out in plain PyTorch ops (no transformers code), so that
    torch.onnx's tracer sees only tensors: explicit KV cache in and out, an additive mask built
    from attention_mask and the causal order, RoPE from position_ids (rotate-half layout)."""

    def __init__(self, hf):
        super().__init__()
        cfg = hf.config
        self.cfg = cfg
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.hf = hf
        theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def rms(self, x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + self.eps))

    def rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def forward(self, input_ids, attention_mask, position_ids, *past):
        m = self.hf.model
        b, s = input_ids.shape
        x = m.embed_tokens(input_ids)
        freqs = position_ids[..., None].float() * self.inv_freq  # [b, s, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [b, 1, s, d]
        total = attention_mask.shape[1]
        q_pos = torch.arange(s, device=input_ids.device)[:, None] + (total - s)
        k_pos = torch.arange(total, device=input_ids.device)[None, :]
        allowed = (k_pos <= q_pos)[None, None] & (attention_mask[:, None, None, :] > 0)
        bias = torch.where(allowed, torch.zeros((), dtype=x.dtype), torch.full((), torch.finfo(x.dtype).min, dtype=x.dtype))
        presents = []
        group = self.n_heads // self.n_kv
        for layer_index, layer in enumerate(m.layers):
            att = layer.self_attn
            h = self.rms(x, layer.input_layernorm.weight)
            q = att.q_proj(h).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
            k = att.k_proj(h).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
            v = att.v_proj(h).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            k = torch.cat((past[2 * layer_index], k), dim=2)
            v = torch.cat((past[2 * layer_index + 1], v), dim=2)
            presents += [k, v]
            kr = k.repeat_interleave(group, dim=1)
            vr = v.repeat_interleave(group, dim=1)
            scores = q @ kr.transpose(2, 3) / math.sqrt(self.head_dim) + bias
            a = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ vr
            x = x + att.o_proj(a.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))
            h = self.rms(x, layer.post_attention_layernorm.weight)
            x = x + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
        logits = self.hf.lm_head(self.rms(x, m.norm.weight))
        return (logits, *presents)


def onnx_decoder_reference(source: Path, out_dir: Path, windows: torch.Tensor, prompt_ids: list[list[int]], log) -> dict:
    import onnx
    import onnxruntime as ort

    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="eager",
                                              local_files_only=True).eval()
    plain = PlainDecoder(hf).eval()
    L, kv, hd = plain.n_layers, plain.n_kv, plain.head_dim
    empty = [torch.zeros(1, kv, 0, hd) for _ in range(2 * L)]

    # The plain decoder against transformers itself (CPU, float32).
    with torch.no_grad():
        check = []
        for ids in prompt_ids:
            t = torch.tensor([ids])
            ref = hf(input_ids=t, use_cache=False).logits[0]
            got = plain(t, torch.ones_like(t), torch.arange(len(ids))[None], *empty)[0][0]
            check.append(float((ref - got).abs().max()))
    log(f"plain decoder vs transformers, max |logit diff| per prompt: {check}")
    assert max(check) < 1e-3, check

    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    model_path = onnx_dir / "model.onnx"
    input_names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(L) for kind in ("key", "value")]
    output_names = ["logits"] + [f"present.{i}.{kind}" for i in range(L) for kind in ("key", "value")]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(L):
        for kind in ("key", "value"):
            axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
    dummy_past = [torch.randn(2, kv, 3, hd) for _ in range(2 * L)]
    dummy = (torch.randint(0, 100, (2, 5)), torch.ones(2, 8, dtype=torch.long), torch.arange(3, 8)[None].repeat(2, 1), *dummy_past)
    torch.onnx.export(plain, dummy, str(model_path), input_names=input_names, output_names=output_names,
                      dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(model_path))
    onnx.checker.check_model(proto)
    ops = sorted({n.op_type for n in proto.graph.node})
    log(f"onnx ops: {ops}; bytes {model_path.stat().st_size}")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, out_dir / name)

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def run(ids: list[int], past=None, start=0):
        n_past = 0 if past is None else past[0].shape[2]
        feeds = {"input_ids": np.array([ids], dtype=np.int64),
                 "attention_mask": np.ones((1, n_past + len(ids)), dtype=np.int64),
                 "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None]}
        for i in range(2 * L):
            feeds[input_names[3 + i]] = past[i] if past is not None else np.zeros((1, kv, 0, hd), np.float32)
        out = sess.run(None, feeds)
        return out[0][0], out[1:]

    prompts = []
    with torch.no_grad():
        for ids in prompt_ids:
            ref = hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
            full, _ = run(ids)
            cut = len(ids) // 2
            _, past = run(ids[:cut])
            tail, _ = run(ids[cut:], past, cut)
            prompts.append({"ids": ids, "ort_vs_torch_max_abs": float(np.abs(full - ref).max()),
                            "cached_vs_full_max_abs": float(np.abs(tail - full[cut:]).max()),
                            "last_logits_top5": np.argsort(-ref[-1])[:5].tolist(),
                            "last_logits": ref[-1].tolist()})
    log("onnxruntime vs torch per prompt: " + ", ".join(f"{p['ort_vs_torch_max_abs']:.2e} (cached {p['cached_vs_full_max_abs']:.2e})" for p in prompts))

    nll = []
    for w in windows.tolist():
        logits, _ = run(w)
        lp = torch.log_softmax(torch.from_numpy(logits[:-1]).double(), dim=-1)
        nll.append(float(-lp.gather(-1, torch.tensor(w[1:])[:, None]).mean()))
    nll = np.array(nll)
    torch_nll = window_nll(hf.cuda(), windows)
    return {
        "about": "qwen2-tiny exported by torch.onnx (TorchScript exporter, opset 17) from a plain PyTorch "
                 "decoder checked against transformers; Hugging Face ONNX I/O names; numbers from onnxruntime (Python, CPU)",
        "generated_by": "resources/models/train/make_export_reference.py",
        "source": str(source.relative_to(REPO_ROOT)),
        "folder": str(out_dir.relative_to(REPO_ROOT)),
        "model_sha256": sha256(model_path),
        "inputs": input_names, "outputs": output_names, "ops": ops,
        "plain_vs_transformers_max_abs": max(check),
        "prompts": prompts,
        "windows": int(windows.shape[0]),
        "ort_mean_nll": float(nll.mean()), "ort_ppl": math.exp(float(nll.mean())),
        "torch_mean_nll": float(torch_nll.mean()), "torch_ppl": math.exp(float(torch_nll.mean())),
        "ort_window_nll_prefix": nll[:16].tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exports", type=Path, nargs="*", default=[])
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    log = print
    log(f"fp32 switches: {set_exact_fp32()}")
    models = REPO_ROOT / "resources" / "models"
    windows = heldout_windows(models / "default" / "tokenizer.json")
    if a.smoke:
        windows = windows[:4]
    tok = Tokenizer.from_file(str(models / "default" / "tokenizer.json"))
    prompt_ids = [encode_text(tok, p) for p in PROMPTS]
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "device": torch.cuda.get_device_name(0)}
    try:
        import onnx
        import onnxruntime
        versions |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    except ImportError as e:
        log(f"no onnx/onnxruntime: {e}")

    fixtures = REPO_ROOT / "test" / "fixtures"
    exports = {}
    for folder in a.exports:
        entry = dequantised_export_reference(folder.resolve(), windows)
        log(f"{folder.name}: transformers ppl {entry['ppl']:.6f} over {entry['windows']} windows")
        exports[folder.name] = entry
    if exports and not a.smoke:
        (fixtures / "reference" / "export-reference.json").write_text(json.dumps({
            "about": "Perplexity that Hugging Face transformers measures on Quantscope's dequantised safetensors exports",
            "generated_by": "resources/models/train/make_export_reference.py",
            "protocol": "as reference.json: held-out text, 256-token windows from an empty cache, float32, eager attention, TF32 off",
            "heldout_sha256": sha256(HELDOUT_PATH), "versions": versions, "exports": exports}, indent=1) + "\n")

    out_dir = fixtures / "onnx-decoder" / "qwen2-tiny"
    ref = onnx_decoder_reference(models / "qwen2-tiny", out_dir, windows, prompt_ids, log)
    ref["versions"] = versions
    log(f"onnx decoder: ort ppl {ref['ort_ppl']:.6f}, torch ppl {ref['torch_ppl']:.6f} over {ref['windows']} windows")
    (fixtures / "onnx-decoder" / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")


if __name__ == "__main__":
    main()
