#!/usr/bin/env bash
# What test/fixtures/reference/quant-reference.json came from: run on the GPU machine in the
# repository root, with $OUT pointing at a folder that is copied back. A smoke run (8 windows,
# layer 0 only, into /tmp) goes first, so a broken method fails in seconds, not after the others.
set -euo pipefail
OUT=${OUT:-/tmp/quantscope-quant-ref-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, tokenizers; print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, torch.cuda.get_device_name(0))'
python3 resources/models/train/make_quant_reference.py --smoke --out /tmp/quant-reference-smoke.json 2>&1 \
  | tee "$OUT/quant-ref-smoke.log"
python3 resources/models/train/make_quant_reference.py 2>&1 | tee "$OUT/quant-ref.log"
cp test/fixtures/reference/quant-reference.json "$OUT/"
ls -la "$OUT"
