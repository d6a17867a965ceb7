#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels the lent GPU machine lacks for scripts/gpu_bench.sh (the benches,
# the worker and the HTTP server):
# it has Python 3.12, torch 2.11 (CUDA), numpy, accelerate, safetensors, but transformers 5, no
# qwen-tts and none of our own dependencies, and it cannot reach a package index.
# Then, in one device call (carry [".whl"]), see docs/performance.md, "GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=(
  transformers==4.57.3 tokenizers==0.22.1 huggingface_hub==0.36.2 qwen_tts==0.1.1 librosa==0.11.0
  soundfile==0.14.0 sox==1.4.1 soxr==1.1.0 audioread==3.1.0 pooch==1.9.0 decorator==5.3.1 cffi==2.1.1
  pycparser==3.12 platformdirs==4.14.8
  hydra-core==1.3.8 omegaconf==2.3.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
  pyloudnorm==0.1.1 future==1.0.0
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 opentelemetry-api==1.45.2 uvicorn==0.50.1 python-multipart==0.0.34
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
for w in "${wheels[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$w" 2>&1 | grep -v "is ignored: it is neither" || true
done
# omegaconf's parser runtime is published as source only; it is pure Python, so build its wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 2>&1 | grep -v "is ignored: it is neither" || true
ls .whl
