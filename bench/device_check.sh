#!/usr/bin/env bash
# The GPU checks in one command, for a GPU machine without network access: the GPU tests (tests/gpu), then
# benchmark 3 on the GPU. Not yet run on a GPU.
#
# On a machine with network access, in a checkout with tunefleet installed: `make device-pack` puts wheels of
# tunefleet's worker-side dependencies (for Python 3.12) and the built-in model's config and tokenizer into the
# git-ignored .device/. Copy the checkout with .device/ to the GPU machine (it needs Python 3.12 with PyTorch,
# transformers, pytest, NumPy and SciPy) and run there, from the checkout's root:
#   timeout 360 bash bench/device_check.sh
# A time limit is optional: what ran before it is kept, each file written as its step runs. Results go to the
# folder named by the OUT environment variable (default /tmp/tunefleet-device-out): gpu_tests.log,
# finetune_throughput_gpu.json (copy it to bench/results/ and run `python -m bench.write_report`), bench.log
# and nvidia-smi.txt. Arguments go to the benchmark (default `--device cuda`); `--smoke` runs it tiny.
set -uo pipefail
out=${OUT:-/tmp/tunefleet-device-out}
mkdir -p "$out"
site=/tmp/tunefleet-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .device/whl/*.whl \
  || { echo "installing the packed wheels from .device/whl failed" >&2; exit 1; }
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 TUNEFLEET_CACHE_DIR=/tmp/tunefleet-cache
(nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1
python3 -m bench.device_model .device/minilm /tmp/tunefleet-minilm || exit 1
export TUNEFLEET_GPU_TEST_MODEL=/tmp/tunefleet-minilm
python3 -m pytest --noconftest -p no:cacheprovider -m gpu -v tests/gpu 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
[ $# -gt 0 ] || set -- --device cuda
python3 -m bench.finetune_throughput "$@" --model /tmp/tunefleet-minilm --out "$out/finetune_throughput_gpu.json" 2>&1 \
  | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "gpu tests: exit $tests; benchmark 3: exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
