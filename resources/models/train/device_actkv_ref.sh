#!/usr/bin/env bash
# What test/fixtures/reference/actkv-reference.json came from: run on the GPU machine in the
# repository root, with $OUT pointing at a folder that is copied back. A smoke run (8 windows,
# 4 calibration windows, one seed, into /tmp) goes first, so a broken path fails in seconds.
set -euo pipefail
OUT=${OUT:-/tmp/quantscope-actkv-ref-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, tokenizers; print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, torch.cuda.get_device_name(0))'
python3 resources/models/train/make_actkv_reference.py --smoke --out /tmp/actkv-reference-smoke.json 2>&1 \
  | tee "$OUT/actkv-ref-smoke.log"
if [ "${SMOKE_ONLY:-0}" = 1 ]; then cp /tmp/actkv-reference-smoke.json "$OUT/"; exit 0; fi
python3 resources/models/train/make_actkv_reference.py 2>&1 | tee "$OUT/actkv-ref.log"
cp test/fixtures/reference/actkv-reference.json "$OUT/"
ls -la "$OUT"
