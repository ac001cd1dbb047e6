#!/usr/bin/env bash
# The browser test as CI runs it (.ci/run calls this after `cargo test` and the quick demo):
# Debian's Chromium and playwright-core, the page built with the demo's base beside it,
# LoRA and HydraLoRA fine-tuned in headless Chromium, then checked against the native
# engine by the browser_check example that `cargo test --workspace` built.
#
#   web/ci.sh BASE_DIR [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: web/ci.sh BASE_DIR [STEPS]}
steps=${2:-30}

if ! command -v chromium >/dev/null; then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends chromium
fi
(cd web && npm ci --no-audit --no-fund)
web/build.sh --base "$base"
out=$(mktemp -d)
node web/test/browser.mjs "$out" "$steps"
check="${CARGO_TARGET_DIR:-target}/debug/examples/browser_check"
[[ -x $check ]] || cargo build -p hydralora-web --example browser_check
"$check" "$out" web/dist/base
