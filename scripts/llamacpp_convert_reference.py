#!/usr/bin/env python3
"""Writes tests/data/gguf-lora/convert/: llama.cpp's own `convert_lora_to_gguf.py` run on PEFT
adapters of fixture models, the files tests/gguf_export.rs compares `hydralora export` with
(tensor names, types, shapes, bytes, alpha).

Cases: ../shared/fixtures/tiny-llama/lora (q_proj, v_proj), tests/fixtures-extra/gqa-llama3-rope/lora
(all seven targets, one KV head, rsLoRA) and tests/fixtures-extra/mha-tied-bf16/lora.

Usage: python scripts/llamacpp_convert_reference.py LLAMA_CPP_DIR
  LLAMA_CPP_DIR: a llama.cpp source tree (the llama-cpp-python sdist carries one under
  vendor/llama.cpp: `pip download --no-deps --no-binary :all: llama-cpp-python`). The converter
  needs torch, transformers and safetensors in this Python; its gguf-py comes from the tree.
"""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/data/gguf-lora/convert"
CASES = {
    "tiny-llama": ROOT.parent / "shared/fixtures/tiny-llama",
    "gqa-llama3-rope": ROOT / "tests/fixtures-extra/gqa-llama3-rope",
    "mha-tied-bf16": ROOT / "tests/fixtures-extra/mha-tied-bf16",
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    tree = pathlib.Path(sys.argv[1]).resolve()
    converter = tree / "convert_lora_to_gguf.py"
    if not converter.is_file():
        sys.exit(f"{converter} is missing: give a llama.cpp source tree")
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py")}
    for name, base in CASES.items():
        out = OUT / f"{name}.gguf"
        subprocess.run([sys.executable, str(converter), "--base", str(base), "--outtype", "f32",
                        "--outfile", str(out), str(base / "lora")], check=True, env=env)
        print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
