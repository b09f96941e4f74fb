#!/usr/bin/env bash
# The GPU checks of a session lent a device, in one call: the GPU tests, then benchmark 3 on the GPU.
#
# Here first: `make device-pack` (wheels of tunefleet's worker-side dependencies for the device's Python 3.12,
# and the built-in model's config and tokenizer, into the git-ignored .device/). Then the device tool's run,
# carrying .device:
#   run(command="bash bench/device_check.sh", carry=[".device"], timeout_s=360)
# 360 s leaves room for a second try inside a session's 15 minutes of device time, start-ups included, and
# what ran before a timeout still comes back. The files come back from $OUT: gpu_tests.log,
# finetune_throughput_gpu.json (copy it to bench/results/ and run `python -m bench.write_report`), bench.log
# and nvidia-smi.txt. Arguments go to the benchmark (default `--device cuda`); `--smoke` runs it tiny.
set -uo pipefail
out=${OUT:-/tmp/tunefleet-device-out}
mkdir -p "$out"
site=/tmp/tunefleet-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .device/whl/*.whl \
  || { echo "installing the carried wheels failed" >&2; exit 1; }
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
