#!/usr/bin/env bash
# What the shipped models came from: run on the GPU machine in the repository root, with $OUT
# pointing at a folder that is copied back. A 1-minute smoke run of the whole pipeline (tiny
# models, into /tmp) goes first, so a broken step fails before the long run starts.
set -euo pipefail
OUT=${OUT:-/tmp/quantscope-train-out}
mkdir -p "$OUT"
python3 -c 'import torch, transformers, tokenizers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "safetensors", safetensors.__version__, torch.cuda.get_device_name(0))'
python3 resources/models/train/train.py --smoke --out-root /tmp/quantscope-smoke > "$OUT/smoke.log" 2>&1 \
  || { tail -60 "$OUT/smoke.log"; exit 1; }
grep -v 'warn' "$OUT/smoke.log" | tail -15 || true
python3 resources/models/train/train.py > "$OUT/run.log" 2>&1 || { tail -80 "$OUT/run.log"; status=1; }
grep -v 'warn' "$OUT/run.log" | tail -70 || true
# Results travel back as one tar in pieces of at most 15 MiB (the copy-back limit is 16 MiB a file).
tar -cf - resources/models/default resources/models/qwen2-tiny resources/models/train/logs \
  test/fixtures/reference 2>/dev/null | split -b 15m - "$OUT/result.tar.part-"
ls -la "$OUT"
exit ${status:-0}
