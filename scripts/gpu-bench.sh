#!/usr/bin/env bash
# The speed and correctness check for a machine with a real GPU, in under 10 minutes:
#   1. hydralora info                  (adapter, features, limits; cooperative matrix or not)
#   2. hydralora verify                (parity with transformers/peft fixtures)
#   3. the cooperative-matrix test     (coop kernels against float64, HYDRALORA_REQUIRE_COOPMAT=1:
#                                        fails on a GPU that has none), where cargo is here
#   4. hydralora bench matmul          f32 (today's SIMT kernels), f16 weights, the
#                                      cooperative-matrix kernel (f32 and f16 weights) and the
#                                      automatic choice, at 1024, 2048, 4096 cubed and the LoRA shapes
#   5. hydralora bench step            bench-m and bench-s, LoRA r32 and HydraLoRA: f32 weights,
#                                      f16 frozen weights without cooperative matrices
#                                      (HYDRALORA_COOPMAT=off) and with the f16 one (=on, opt-in
#                                      mixed precision), and (bench-m) f32 weights with =on
#   6. bench-m LoRA with each attention kernel pinned (composed, flash-rows)
# Every run's wall time, host peak RSS and (with nvidia-smi) peak GPU memory go to
# runs.tsv; one table at the end. Raw output lands in benchmarks/<gpu>-<date>/ unless
# OUT_DIR is given. Usage:
#   scripts/gpu-bench.sh [OUT_DIR]
# Environment: HYDRALORA_BIN (default target/release/hydralora, built if missing),
# BENCH_DIR (default ../shared/bench), FIXTURES (default ../shared/fixtures),
# GPU_BENCH_SMALL=1 (tiny sizes, bench-s only, one step: proves the script end to end on a
# CPU driver such as lavapipe, where the cooperative-matrix rows are reported as skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${HYDRALORA_BIN:-target/release/hydralora}
bench_dir=${BENCH_DIR:-../shared/bench}
fixtures=${FIXTURES:-../shared/fixtures}
small=${GPU_BENCH_SMALL:-0}
if [[ ! -x "$bin" ]]; then
    cargo build --release --bin hydralora
fi

gpu=$("$bin" info | sed -n 's/^adapter: *//p' | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//' | cut -c1-40)
out=${1:-benchmarks/${gpu:-unknown}-$(date -u +%Y-%m-%d)}
mkdir -p "$out"
echo "raw output: $out"

if [[ $small == 1 ]]; then
    sizes=(--size 64 --size 128)
    lora=(--lora-shape 256,128,8)
    configs=(bench-s)
    steps=1
else
    sizes=(--size 1024 --size 2048 --size 4096)
    lora=(--lora)
    configs=(bench-m bench-s)
    steps=3
fi

# run NAME CMD...: runs CMD with its stdout to $out/NAME.out, and appends to runs.tsv its
# exit status, wall seconds, host peak RSS (MiB, with GNU time) and peak GPU memory (MiB,
# sampled every 200 ms with nvidia-smi). A failing run is recorded, not fatal.
printf 'run\tstatus\tseconds\thost_rss_mib\tgpu_mib\n' > "$out/runs.tsv"
run() {
    local name=$1; shift
    local sampler=
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/$name.gpumem" 2> /dev/null &
        sampler=$!
    fi
    local timer=()
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f %M -o "$out/$name.rss")
    local start=$SECONDS status=0
    "${timer[@]}" "$@" > "$out/$name.out" 2> "$out/$name.err" || status=$?
    local seconds=$((SECONDS - start))
    [[ -n $sampler ]] && kill "$sampler" 2> /dev/null && wait "$sampler" 2> /dev/null || true
    local rss=- gpu_mib=-
    [[ -s $out/$name.rss ]] && rss=$(( $(tail -1 "$out/$name.rss") / 1024 ))
    [[ -s $out/$name.gpumem ]] && gpu_mib=$(sort -n "$out/$name.gpumem" | tail -1)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$rss" "$gpu_mib" >> "$out/runs.tsv"
    echo "== $name: exit $status, ${seconds}s"
    return 0
}

run info "$bin" info
cat "$out/info.out"
if [[ -d $fixtures ]]; then
    run verify "$bin" verify --fixtures "$fixtures"
    run verify-mixed "$bin" verify --fixtures "$fixtures" --precision mixed
fi
if command -v cargo > /dev/null && [[ $small != 1 ]]; then
    # On the GPU: the cooperative-matrix kernels against the float64 reference, required.
    run coopmat-test env HYDRALORA_REQUIRE_COOPMAT=1 HYDRALORA_REQUIRE_GPU=1 \
        cargo test --release --workspace --test coopmat
fi

# Matmul: name, then the bench's arguments; HYDRALORA_COOPMAT=off keeps today's kernels.
matmul() {
    local name=$1; shift
    run "matmul-$name" "$bin" bench matmul "${sizes[@]}" "${lora[@]}" --json "$@"
}
: > "$out/matmul.jsonl"
HYDRALORA_COOPMAT=off matmul f32 --weights f32
HYDRALORA_COOPMAT=off matmul f16-weights --weights f16
matmul coop-f32-weights --kernel coop --weights f32
matmul coop-f16-weights --kernel coop --weights f16
matmul auto --weights f32
for label in f32 f16-weights coop-f32-weights coop-f16-weights auto; do
    sed "s/^{/{\"run\":\"$label\",/" "$out/matmul-$label.out" >> "$out/matmul.jsonl"
done

: > "$out/step.jsonl"
# step NAME CONFIG METHOD WEIGHTS ENV...: WEIGHTS f32, f16 (--f16-weights: the frozen
# weights in f16; the f16 cooperative-matrix kernel is opt-in, HYDRALORA_COOPMAT=on), or
# mixed (--precision mixed: f16 weights, f16-rounded inputs to their products).
step() {
    local name=$1 cfg=$2 method=$3 weights=$4; shift 4
    local flags=()
    [[ $weights == f16 ]] && flags=(--f16-weights)
    [[ $weights == mixed ]] && flags=(--precision mixed)
    run "step-$name" env "$@" "$bin" bench step --config "$bench_dir/$cfg.json" --method "$method" \
        --steps "$steps" --json "${flags[@]}"
    sed "s/^{/{\"config\":\"$name\",/" "$out/step-$name.out" >> "$out/step.jsonl" || true
}
for cfg in "${configs[@]}"; do
    for method in lora hydra; do
        step "$cfg-$method" "$cfg" "$method" f32 HYDRALORA_COOPMAT=auto
        step "$cfg-$method-f16w" "$cfg" "$method" f16 HYDRALORA_COOPMAT=off
        step "$cfg-$method-f16w-coop" "$cfg" "$method" f16 HYDRALORA_COOPMAT=on
        step "$cfg-$method-mixed" "$cfg" "$method" mixed HYDRALORA_COOPMAT=auto
    done
done
if [[ $small != 1 ]]; then
    # Every product on the f16 cooperative kernel, f32 weights (activations rounded to f16).
    step "bench-m-lora-coop-on" bench-m lora f32 HYDRALORA_COOPMAT=on
    for attention in composed flash-rows; do
        step "bench-m-lora-attn-$attention" bench-m lora f32 HYDRALORA_ATTENTION=$attention
    done
fi

python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def lines(name):
    p = out / name
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []
info = (out / "info.out").read_text().splitlines()
print("\n" + "\n".join(l for l in info if l.startswith(("adapter", "driver", "cooperative"))))
print("\nmatmul GFLOP/s (median of 10 after warm-up; '-' = skipped: kernel not on this device)")
rows, runs = {}, []
for r in lines("matmul.jsonl"):
    key = (r["case"], r["shape"])
    rows.setdefault(key, {})
    if r["run"] not in runs:
        runs.append(r["run"])
    rows[key][r["run"]] = f"{r['gflops']:.1f}" if "gflops" in r else "-"
    if "gflops" in r:
        rows[key][r["run"] + ".kernel"] = r["kernel"]
print(f"  {'case':<18} {'shape':<26}" + "".join(f" {n:>16}" for n in runs) + "  auto kernel")
for (case, shape), v in rows.items():
    print(f"  {case:<18} {shape:<26}" + "".join(f" {v.get(n, '?'):>16}" for n in runs)
          + f"  {v.get('auto.kernel', '')}")
print("\ntraining step (forward, backward, AdamW)")
print(f"  {'run':<32} {'method':<6} {'s/step':>8} {'tokens/s':>10} {'GFLOP/s':>9} {'pool MiB':>9}")
for r in lines("step.jsonl"):
    print(f"  {r['config']:<32} {r['method']:<6} {r['median_s']:>8.3f} {r['tokens_per_s']:>10.0f} "
          f"{r['gflops']:>9.1f} {r['peak_pool_bytes_last_step']/2**20:>9.0f}")
print("\nevery run (exit status, wall seconds, host peak RSS, peak GPU memory by nvidia-smi)")
for i, l in enumerate((out / "runs.tsv").read_text().splitlines()):
    print("  " + "  ".join(f"{c:>14}" if j else f"{c:<32}" for j, c in enumerate(l.split("\t"))))
verify = out / "verify.out"
if verify.exists():
    tail = verify.read_text().strip().splitlines()[-1:] or ["(no output)"]
    print(f"\nverify: {tail[0]}")
PY
