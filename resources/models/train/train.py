#!/usr/bin/env python3
"""Train Quantscope's reference models: a byte-level BPE tokenizer, the default Llama model and
the sharded Qwen2 fixture. Then computes the reference numbers (make_reference.py).

Needs a CUDA GPU with torch, transformers (5.x), tokenizers and safetensors; downloads nothing.

    python3 resources/models/train/train.py                  # full run, writes into the repo
    python3 resources/models/train/train.py --smoke --out-root /tmp/smoke   # 1-minute pipeline check

Outputs (relative to --out-root, default the repository root):
    resources/models/default/      Llama, bf16, model.safetensors + tokenizer
    resources/models/qwen2-tiny/   Qwen2, fp16, sharded safetensors + index + tokenizer
    resources/models/train/logs/   training log and loss curves
    test/fixtures/reference/       reference numbers (written by make_reference.py)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_tokenizer import (  # noqa: E402
    REPO_ROOT, encode_documents, encode_text, read_documents, read_heldout, save_tokenizer,
    train_tokenizer,
)

SEED = 1234
WINDOW = 256  # evaluation window of the perplexity protocol
EOS_ID = 0


@dataclass
class Schedule:
    steps: int
    batch: int  # sequences per step
    seq_len: int  # training sequence length (>= WINDOW so every eval position is trained)
    lr: float
    warmup: int
    eval_every: int
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    dropout: float = 0.0  # training-only residual dropout (see add_training_dropout)


@dataclass
class Spec:
    vocab_size: int
    llama: dict
    llama_schedules: list[Schedule]  # candidates; the one with the best validation NLL wins
    qwen2: dict
    qwen2_schedule: Schedule
    tokenizer_docs: int | None  # None: all training documents
    eval_windows: int | None  # None: all windows (smoke runs evaluate a few)
    train_time_budget_s: float  # a later llama candidate is skipped if it would overrun


FULL = Spec(
    vocab_size=8192,
    # Every linear in-feature count (256, 768) is a multiple of 128, so int4 groups of 32 and
    # 128 tile each row exactly and the quantizer references need no padding rule.
    llama=dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=4, head_dim=32, rope_theta=10000.0, max_position_embeddings=512,
               rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Without dropout the Llama overfits the 2.25M training tokens after ~7 epochs (first run:
    # best validation ppl 39.3, held-out 42.6, worse than the 1.8M-parameter Qwen2); residual
    # dropout during training lets it use its size.
    llama_schedules=[
        Schedule(steps=1200, batch=32, seq_len=512, lr=1.5e-3, warmup=100, eval_every=60, dropout=0.1),
        Schedule(steps=2400, batch=32, seq_len=512, lr=1.5e-3, warmup=100, eval_every=80, dropout=0.1),
        Schedule(steps=2400, batch=32, seq_len=512, lr=1.5e-3, warmup=100, eval_every=80, dropout=0.2),
    ],
    qwen2=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=512,
               rms_norm_eps=1e-6, tie_word_embeddings=True),
    qwen2_schedule=Schedule(steps=2000, batch=32, seq_len=512, lr=3e-3, warmup=100, eval_every=100),
    tokenizer_docs=None,
    eval_windows=None,
    train_time_budget_s=340.0,
)

SMOKE = Spec(
    vocab_size=1024,
    llama=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, rope_theta=10000.0, max_position_embeddings=512,
               rms_norm_eps=1e-5, tie_word_embeddings=False),
    llama_schedules=[Schedule(steps=20, batch=8, seq_len=512, lr=1e-3, warmup=5, eval_every=10, dropout=0.1)],
    qwen2=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=512,
               rms_norm_eps=1e-6, tie_word_embeddings=True),
    qwen2_schedule=Schedule(steps=20, batch=8, seq_len=512, lr=1e-3, warmup=5, eval_every=10),
    tokenizer_docs=40,
    eval_windows=16,
    train_time_budget_s=60.0,
)


class Log:
    """Prints and keeps every line, so the full log can be written next to the curves."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.lines.append(line)


def build_config(family: str, arch: dict, vocab_size: int):
    arch = dict(arch)
    theta = arch.pop("rope_theta")
    common = dict(vocab_size=vocab_size, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
                  rope_parameters={"rope_type": "default", "rope_theta": theta}, **arch)
    if family == "llama":
        return LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    return Qwen2Config(use_sliding_window=False, **common)  # Qwen2 always has q/k/v bias


def effective_rope_theta(model) -> float:
    """RoPE base recovered from the model's own inverse frequencies: inv_freq[1] = theta^(-2/d)."""
    inv = model.model.rotary_emb.inv_freq.double()
    d = 2 * inv.numel()
    return float(inv[1] ** (-d / 2))


def windows_of(ids: np.ndarray, limit: int | None) -> torch.Tensor:
    n = len(ids) // WINDOW
    if limit is not None:
        n = min(n, limit)
    return torch.from_numpy(ids[: n * WINDOW].astype(np.int64)).view(n, WINDOW)


@torch.no_grad()
def monitor_nll(model, windows: torch.Tensor, batch: int = 128) -> float:
    """Mean NLL per predicted token with the protocol's windows; bf16 autocast for speed
    (the reference numbers are recomputed in fp32 from the saved files)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in range(0, windows.shape[0], batch):
        x = windows[b:b + batch].cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits
        total += F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                 x[:, 1:].reshape(-1), reduction="sum").double().item()
        count += x.shape[0] * (WINDOW - 1)
    model.train(was_training)
    return total / count


def lr_at(step: int, s: Schedule) -> float:
    if step <= s.warmup:
        return s.lr * step / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def add_training_dropout(model, p: float) -> list:
    """Dropout on the outputs of every attention and MLP block before they join the residual
    stream, active only in training mode. Implemented as forward hooks so the architecture and
    the saved model are plain Llama/Qwen2: at inference (eval mode) the hooks do nothing."""
    if p <= 0:
        return []

    def hook(module, inputs, output):
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(hook))
        handles.append(layer.mlp.register_forward_hook(hook))
    return handles


def train_one(name: str, model, s: Schedule, train_ids: torch.Tensor, valid: torch.Tensor,
              heldout: torch.Tensor, log: Log) -> dict:
    """Trains in place; at the end the model holds the checkpoint with the best validation NLL.
    The held-out NLL is printed alongside so convergence is visible, but never used to decide."""
    model.cuda().train()
    hooks = add_training_dropout(model, s.dropout)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    rng = np.random.default_rng(SEED)
    offsets = torch.arange(s.seq_len, device="cuda")
    curve: list[dict] = []
    best = {"valid_nll": float("inf"), "step": 0, "state": None}
    tokens_per_epoch = train_ids.numel()
    t_start = time.time()
    loss_sum, loss_n = 0.0, 0
    for step in range(1, s.steps + 1):
        lr = lr_at(step, s)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.from_numpy(rng.integers(0, tokens_per_epoch - s.seq_len, size=s.batch)).cuda()
        x = train_ids[starts[:, None] + offsets]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_sum += loss.item() if step % 10 == 0 or step == s.steps else 0.0
        loss_n += 1 if step % 10 == 0 or step == s.steps else 0
        if step % s.eval_every == 0 or step == s.steps:
            v = monitor_nll(model, valid)
            h = monitor_nll(model, heldout)
            epochs = step * s.batch * s.seq_len / tokens_per_epoch
            point = {"step": step, "epochs": round(epochs, 3), "lr": lr,
                     "train_loss": loss_sum / max(1, loss_n), "valid_nll": v, "heldout_nll": h,
                     "valid_ppl": math.exp(v), "heldout_ppl": math.exp(h),
                     "seconds": round(time.time() - t_start, 2)}
            curve.append(point)
            loss_sum, loss_n = 0.0, 0
            mark = ""
            if v < best["valid_nll"]:
                best = {"valid_nll": v, "step": step,
                        "state": {k: t.detach().clone() for k, t in model.state_dict().items()}}
                mark = " *"
            log(f"{name} step {step:5d} ep {epochs:5.2f} lr {lr:.2e} train {point['train_loss']:.4f} "
                f"valid ppl {math.exp(v):8.3f} heldout ppl {math.exp(h):8.3f}{mark}")
    for h in hooks:
        h.remove()
    model.load_state_dict(best["state"])
    seconds = time.time() - t_start
    log(f"{name}: {s.steps} steps in {seconds:.1f}s ({1000 * seconds / s.steps:.1f} ms/step); "
        f"best valid ppl {math.exp(best['valid_nll']):.3f} at step {best['step']}")
    return {"schedule": asdict(s), "curve": curve, "best_step": best["step"],
            "best_valid_nll": best["valid_nll"], "seconds": seconds,
            "final_heldout_nll_monitor": monitor_nll(model, heldout)}


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models and steps: checks the pipeline")
    ap.add_argument("--out-root", type=Path, default=REPO_ROOT)
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    spec = SMOKE if args.smoke else FULL
    out = args.out_root.resolve()
    log = Log()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    log(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; smoke={args.smoke}; out={out}")

    # 1. Tokenizer on the training documents only.
    train_docs = read_documents("corpus-train.txt.xz")
    valid_docs = read_documents("corpus-valid.txt.xz")
    heldout_text = read_heldout()
    tok_docs = train_docs if spec.tokenizer_docs is None else train_docs[: spec.tokenizer_docs]
    tok = train_tokenizer(tok_docs, spec.vocab_size)
    assert tok.get_vocab_size() == spec.vocab_size, tok.get_vocab_size()
    assert tok.token_to_id("<|endoftext|>") == EOS_ID
    log(f"tokenizer: vocab {tok.get_vocab_size()} trained on {len(tok_docs)} documents")

    # Training stream: documents separated by <|endoftext|>. Validation and held-out text are
    # tokenized whole, exactly as the perplexity protocol does.
    stream = []
    for ids in encode_documents(tok, train_docs):
        stream.extend(ids)
        stream.append(EOS_ID)
    train_ids = torch.tensor(stream, dtype=torch.long, device="cuda")
    valid = windows_of(np.array(encode_text(tok, "\n".join(valid_docs)), dtype=np.int64), spec.eval_windows)
    heldout = windows_of(np.array(encode_text(tok, heldout_text), dtype=np.int64), spec.eval_windows)
    log(f"tokens: train {train_ids.numel()}, valid windows {valid.shape[0]}, heldout windows {heldout.shape[0]}")

    default_dir = out / "resources" / "models" / "default"
    qwen_dir = out / "resources" / "models" / "qwen2-tiny"
    logs_dir = out / "resources" / "models" / "train" / "logs"
    for d in (default_dir, qwen_dir, logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    summary: dict = {"seed": SEED, "smoke": args.smoke, "train_tokens": int(train_ids.numel()),
                     "valid_windows": int(valid.shape[0]), "heldout_windows": int(heldout.shape[0]),
                     "vocab_size": spec.vocab_size}

    # 2. Llama: each candidate schedule from the same initialisation; best validation NLL wins.
    candidates = []
    best_model, best_run = None, None
    train_started = time.time()
    for i, sched in enumerate(spec.llama_schedules):
        if candidates:
            per_step = candidates[-1]["seconds"] / candidates[-1]["schedule"]["steps"]
            needed = per_step * sched.steps
            if time.time() - train_started + needed > spec.train_time_budget_s:
                log(f"llama candidate {i} ({sched.steps} steps, ~{needed:.0f}s) skipped: time budget")
                continue
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(build_config("llama", spec.llama, spec.vocab_size))
        theta = effective_rope_theta(model)
        assert abs(theta / spec.llama["rope_theta"] - 1) < 1e-4, f"rope theta {theta}"
        log(f"llama candidate {i}: {param_count(model):,} parameters, rope theta {theta:g}, {sched}")
        run = train_one(f"llama[{i}]", model, sched, train_ids, valid, heldout, log)
        candidates.append(run)
        if best_run is None or run["best_valid_nll"] < best_run["best_valid_nll"]:
            best_model, best_run = model.cpu(), run
        else:
            del model
        torch.cuda.empty_cache()
    chosen = candidates.index(best_run)
    log(f"llama: chose candidate {chosen} (best valid ppl {math.exp(best_run['best_valid_nll']):.3f})")
    summary["llama"] = {"parameters": param_count(best_model), "chosen_candidate": chosen,
                        "candidates": candidates, "config": spec.llama}
    # bf16: the training compute dtype, the same exponent range as fp32 (no overflow risk) and
    # what most current checkpoints ship in; the Qwen2 fixture uses fp16 so both decoders are hit.
    best_model.to(torch.bfloat16).save_pretrained(default_dir)
    save_tokenizer(tok, default_dir, spec.llama["max_position_embeddings"])
    del best_model

    # 3. Qwen2 fixture: tied embeddings, q/k/v bias, fp16, sharded.
    torch.manual_seed(SEED)
    qwen = Qwen2ForCausalLM(build_config("qwen2", spec.qwen2, spec.vocab_size))
    theta = effective_rope_theta(qwen)
    assert abs(theta / spec.qwen2["rope_theta"] - 1) < 1e-4, f"rope theta {theta}"
    assert qwen.lm_head.weight.data_ptr() == qwen.model.embed_tokens.weight.data_ptr(), "not tied"
    log(f"qwen2: {param_count(qwen):,} parameters, rope theta {theta:g}")
    qrun = train_one("qwen2", qwen, spec.qwen2_schedule, train_ids, valid, heldout, log)
    summary["qwen2"] = {"parameters": param_count(qwen), "run": qrun, "config": spec.qwen2}
    qwen = qwen.cpu().to(torch.float16)
    for shard_size in ("1MB", "600KB", "300KB"):
        for f in qwen_dir.glob("model*.safetensors*"):
            f.unlink()
        qwen.save_pretrained(qwen_dir, max_shard_size=shard_size)
        shards = sorted(qwen_dir.glob("model-*.safetensors"))
        if len(shards) >= 3 and (qwen_dir / "model.safetensors.index.json").exists():
            break
    log(f"qwen2: {len(shards)} shards with max_shard_size {shard_size}: {[p.name for p in shards]}")
    assert len(shards) >= 3, "could not shard the Qwen2 fixture into 3 files"
    save_tokenizer(tok, qwen_dir, spec.qwen2["max_position_embeddings"])
    del qwen
    torch.cuda.empty_cache()

    (logs_dir / "training-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (logs_dir / "train.log").write_text("\n".join(log.lines) + "\n")

    # 4. Reference numbers, from the saved files only.
    if not args.skip_reference:
        import make_reference
        make_reference.run(out, smoke=args.smoke, log=log)
    (logs_dir / "train.log").write_text("\n".join(log.lines) + "\n")
    log("done")


if __name__ == "__main__":
    main()
