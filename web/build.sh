#!/usr/bin/env bash
# Builds the browser page into web/dist: the engine and model for wasm32 (wgpu on the
# browser's WebGPU), wasm-bindgen's JavaScript glue, and the page itself.
#
#   web/build.sh [--base DIR]
#
# --base DIR   also serve a base model with the page (DIR holds config.json,
#              model.safetensors and char_codec.json or tokenizer.json), e.g. the demo's cached base:
#              web/build.sh --base ~/.cache/hydralora/demo-base-v3-300steps
#
# Then serve web/dist with any static file server and open it in a browser with WebGPU:
#   python3 -m http.server --directory web/dist 8080     # http://localhost:8080
set -euo pipefail
cd "$(dirname "$0")/.."

base=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        *) echo "usage: web/build.sh [--base DIR]" >&2; exit 2 ;;
    esac
done

# The wasm-bindgen command must be the version of the wasm-bindgen crate the page links.
version=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' web/Cargo.toml)
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]]; then
    echo "installing wasm-bindgen-cli $version (a few minutes, once)"
    # No TLS back end: the command is only used offline, on our own .wasm.
    cargo install --no-default-features wasm-bindgen-cli --version "=$version"
fi

target_dir="${CARGO_TARGET_DIR:-target}"
# No debug info in the page (the release profile keeps some for native profiling).
CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --target wasm32-unknown-unknown -p hydralora-web
rm -rf web/dist
mkdir -p web/dist
wasm-bindgen --target web --no-typescript --out-dir web/dist/pkg \
    "$target_dir/wasm32-unknown-unknown/release/hydralora_web.wasm"
cp web/www/* web/dist/
if [[ -n "$base" ]]; then
    mkdir -p web/dist/base
    for f in config.json model.safetensors char_codec.json tokenizer.json; do
        [[ -f "$base/$f" ]] && cp "$base/$f" web/dist/base/
    done
fi
echo "built web/dist ($(du -sh web/dist | cut -f1))"
