#!/usr/bin/env bash
# The speed and correctness check for a machine with a real GPU, in under 5 minutes:
#   1. hydralora info                      (adapter, backend, features, limits)
#   2. hydralora verify                    (parity with transformers/peft fixtures)
#   3. hydralora bench matmul              (square sizes and LoRA's skinny shapes)
#   4. hydralora bench step on bench-m     (LoRA all targets; HydraLoRA N=4 on the MLP)
#   5. hydralora bench step on bench-s     (the CPU-sized config, for comparison)
#   6. bench-m LoRA with each attention kernel pinned (HYDRALORA_ATTENTION=composed,
#      flash-rows): the per-row flash kernels' GPU speed against the composed path
# and prints one table at the end. Usage:
#   scripts/gpu-bench.sh [OUT_DIR]
# Environment: HYDRALORA_BIN (default target/release/hydralora, built if missing),
# BENCH_DIR (default ../shared/bench), FIXTURES (default ../shared/fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-bench-out}
mkdir -p "$out"
bin=${HYDRALORA_BIN:-target/release/hydralora}
bench_dir=${BENCH_DIR:-../shared/bench}
fixtures=${FIXTURES:-../shared/fixtures}
if [[ ! -x "$bin" ]]; then
    cargo build --release --bin hydralora
fi

echo "== info";   "$bin" info | tee "$out/info.txt"
if [[ -d "$fixtures" ]]; then
    echo "== verify"; "$bin" verify --fixtures "$fixtures" | tee "$out/verify.txt" || echo "verify FAILED" | tee -a "$out/verify.txt"
fi
echo "== bench matmul"
"$bin" bench matmul --json > "$out/matmul.jsonl"
"$bin" bench matmul --lora --json >> "$out/matmul.jsonl"
echo "== bench step"
: > "$out/step.jsonl"
for cfg in bench-m bench-s; do
    for method in lora hydra; do
        "$bin" bench step --config "$bench_dir/$cfg.json" --method "$method" --steps 3 --json \
            | sed "s/^{/{\"config\":\"$cfg\",/" >> "$out/step.jsonl"
    done
done

for attention in composed flash-rows; do
    HYDRALORA_ATTENTION=$attention "$bin" bench step --config "$bench_dir/bench-m.json" --method lora --steps 3 --json \
        | sed "s/^{/{\"config\":\"bench-m attn=$attention\",/" >> "$out/step.jsonl" \
        || echo "attention $attention FAILED"
done

python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("\nmatmul (GFLOP/s, median of 10 after warm-up)")
for line in (out / "matmul.jsonl").read_text().splitlines():
    r = json.loads(line)
    shape = r.get("shape") or f"{r.get('m')}x{r.get('n')}x{r.get('k')}"
    print(f"  {str(shape):<40} {r.get('gflops', 0):>10.1f}")
print("\ntraining step (forward, backward, AdamW)")
print(f"  {'config':<26} {'method':<6} {'s/step':>8} {'tokens/s':>10} {'GFLOP/s':>9} {'peak MiB':>9}")
for line in (out / "step.jsonl").read_text().splitlines():
    r = json.loads(line)
    print(f"  {r['config']:<26} {r['method']:<6} {r['median_s']:>8.3f} {r['tokens_per_s']:>10.0f} {r['gflops']:>9.1f} {r['peak_pool_bytes_last_step']/2**20:>9.0f}")
PY
