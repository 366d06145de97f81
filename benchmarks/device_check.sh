#!/usr/bin/env bash
# One prepared GPU session (the device tool's H200): the CUDA tests, stage-2 throughput with
# and without bf16 AMP, the paper path (ViT-B-16 at 256x128, AMP: stage-1 and stage-2 images/s,
# bare step against the pipeline's input path, fake Stoat end to end), and the default
# pipeline's train/eval path on the GPU next to the committed CPU metrics. Run from the repo root on a machine whose python3 has torch; the
# pure-Python packages it lacks (open_clip, ftfy, wcwidth, the lite0 weights) travel in
# .gpu_site. Results go to $OUT (default work/device_out, relative to the repo root); each step has its own timeout so a
# slow one cannot take the others with it.
set -uo pipefail
OUT=${OUT:-work/device_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_site:$PWD" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip',
    open_clip.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout "${T_TESTS:-150}" python3 -m pytest -q -o addopts="" -p no:cacheprovider -rA \
    tests/test_train.py -k cuda 2>&1 | tail -25 | tee "$OUT/tests.txt"
timeout "${T_BENCH:-120}" python3 benchmarks/bench_stage2.py --device cuda 2>&1 \
    | tee "$OUT/bench_stage2.txt"
timeout "${T_INPUT:-120}" python3 benchmarks/bench_stage2_input.py --device cuda 2>&1 \
    | grep -v -i "warning\|warn(" | tee "$OUT/bench_stage2_input.txt"
timeout "${T_PAPER:-240}" python3 benchmarks/bench_paper_gpu.py --device cuda \
    --out work/paper_gpu --workers 8 2>&1 | grep -v -i "warning\|warn(" | tee "$OUT/bench_paper_gpu.txt"
timeout "${T_PIPE:-300}" python3 benchmarks/bench_device.py --device cuda --out work/device_scratch \
    --log "$OUT/device_runs.jsonl" --seeds ${SEEDS:-0 1 2} --workers 8 2>&1 \
    | grep -v -i "warning\|warn(" | tee "$OUT/bench_device.txt"
echo "exit codes: ${PIPESTATUS[*]}"
