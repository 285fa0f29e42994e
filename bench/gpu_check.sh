#!/usr/bin/env bash
# The GPU measurements of the speed work in one call, under 8 minutes on one H100/H200:
#   1. the kernel-vs-reference tests on CUDA (tests/ops: the Triton Titans kernels at a preset's sizes in float32
#      and bf16, the sliding-window attention, fla's gated delta rule if fla-core is installed);
#   2. bench/throughput.py, bf16, for Transformer++, Titans MAC/MAG/MAL/LMM (memory_kernel: triton), HOPE
#      (memory_recompute) and Hope-Attention at 170M (seq 2048 x batch 8) and 340M (seq 4096 x batch 4), and
#      titans-mac-170m on the PyTorch op (what the kernel gains on the same GPU);
#   3. bench/precision.py: the Triton kernel's error against float64 in float32 and under bf16 autocast;
#   4. bench/gpu_table.py: throughput_<gpu>.json and throughput_<gpu>.md (tokens/s, x Transformer++, MFU, peak GiB).
#
#   bash bench/gpu_check.sh               # on the GPU; results in bench/results, or in $GPU_CHECK_OUT if set
#   bash bench/gpu_check.sh --dry-run     # on CPU: the same steps, one size, debug presets (tests/test_gpu_check.py)
#
# The GPU machine may have no network: torch (with triton) must be installed there; pytest and pyyaml too, or in
# .gpu_deps (made beforehand with `pip install --target .gpu_deps pytest pyyaml` and copied along).
# Each stage runs under its own time limit and writes its results as it goes, so a slow stage loses only itself.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu_deps ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_deps"; fi
OUT=${GPU_CHECK_OUT:-bench/results}
mkdir -p "$OUT"
start=$SECONDS
status=0

if [ "${1:-}" = "--dry-run" ]; then
  NAME=cpu-dry-run SIZES=(debug) SHAPES=("64 2") LIMITS=(120 120 60)
  PRECISION=(--device cpu --kernel torch --seq_len 128 --heads 1)
  RUN=(--device cpu --precision fp32 --steps 1 --warmup 0 --no_cpu_peak)
  TESTS=(tests/ops/test_titans_triton.py -k naive_reference)
  export OMP_NUM_THREADS=1
  unset TRITON_INTERPRET  # the rows take the PyTorch op on CPU; tests/conftest.py sets it for the kernel tests
else
  NAME=$(python -c "import re, torch; print(re.search(r'\b([A-Z]+[0-9]+[A-Z]*)\b', torch.cuda.get_device_name()).group(1).lower())") || exit 1
  PEAK=$(python -c "print({'h100': 989, 'h200': 989, 'a100': 312}.get('$NAME', 0))")
  SIZES=(170m 340m) SHAPES=("2048 8" "4096 4") LIMITS=(120 160 160 40)
  PRECISION=(--device cuda --kernel triton)
  RUN=(--device cuda --precision bf16 --steps 3 --warmup 2 --peak_tflops "$PEAK")
  TESTS=(tests/ops/test_titans_triton.py tests/ops/test_attention.py tests/ops/test_titans_gated_delta.py -m "")
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee "$OUT/gpu_check_${NAME}_env.txt"
python -c "import triton; print('triton', triton.__version__)" | tee -a "$OUT/gpu_check_${NAME}_env.txt" || true

presets() {  # the rows of one size: Transformer++ first (the ratios' base)
  local size=$1 titans=()
  for family in mac mag mal lmm; do titans+=("titans-$family-$size:memory_kernel=triton"); done
  echo "transformer-$size ${titans[*]} hope-$size:memory_recompute=true hope-attention-$size"
}

echo "== [$((SECONDS - start)) s] kernel tests"
timeout "${LIMITS[0]}" python -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$OUT/gpu_check_${NAME}_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

files=()
for i in "${!SIZES[@]}"; do
  size=${SIZES[$i]} shape=(${SHAPES[$i]}) json="$OUT/throughput_${NAME}_${size}_${shape[0]}.json"
  rows=($(presets "$size"))
  if [ "$size" = 170m ]; then rows+=("titans-mac-170m"); fi  # the PyTorch op, for the kernel's gain
  echo "== [$((SECONDS - start)) s] throughput $size, seq ${shape[0]} x batch ${shape[1]}"
  timeout "$((LIMITS[i + 1]))" python bench/throughput.py --presets "${rows[@]}" --seq_len "${shape[0]}" \
    --batch_size "${shape[1]}" "${RUN[@]}" --keep_going --out "$json" || status=1
  if [ -f "$json" ]; then files+=("$json"); fi
done

echo "== [$((SECONDS - start)) s] precision"
timeout "${LIMITS[-1]}" python bench/precision.py "${PRECISION[@]}" --out "$OUT/precision_${NAME}.json" || status=1

echo "== [$((SECONDS - start)) s] table"
if [ ${#files[@]} -gt 0 ]; then
  python bench/gpu_table.py --name "$NAME" --command "bash bench/gpu_check.sh $*" "$OUT" "${files[@]}" || status=1
else
  status=1
fi
echo "== done in $((SECONDS - start)) s, status $status (results in $OUT)"
exit $status
