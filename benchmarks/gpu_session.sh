#!/usr/bin/env bash
# Issue 14's GPU checks as one prepared run on a lent GPU (device tool), at most ~10 minutes:
#
#   bash benchmarks/gpu_wheels.sh                       # here, first: .whl (58 MB)
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#
# Logs land in $OUT (at most 8 files come back); copy them to benchmarks/results/<card>-<date>/.
# Each step has its own time limit, so one that hangs costs only its share.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=$(realpath -m "${OUT:-benchmarks/out/gpu-session}")  # absolute: the steps run in benchmarks/
mkdir -p "$OUT"
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.log"
    timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
    echo "== $name exit $?" | tee -a "$OUT/$name.log"
    tail -n 25 "$OUT/$name.log"
}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
cd benchmarks
step 1-doctor 15 bionas doctor
step 2-test_gpu 130 python3 -m pytest -q -rA -s -p no:cacheprovider ../tests/test_gpu.py \
    ../tests/test_fused_optimizers.py ../tests/test_prune_mask.py ../tests/test_batch_decode.py \
    -k "test_gpu.py or cuda or nvjpeg"
step 3-loop_b64 60 python3 bench_gpu_loop.py --batches 64 --variants legacy,bionas,channels-last
step 4-loop_auto 100 python3 bench_gpu_loop.py --batches auto --variants legacy,bionas --pairs 20
step 5-loop_compile 100 python3 bench_gpu_loop.py --batches 64 --variants bionas,compile
step 6-bench_e2e 100 python3 bench_e2e_gpu.py --n 5000 --shard-size 100 --epochs 3
step 7-log_cadence 25 python3 bench_log_cadence.py --device cuda --image-size 224 --batch-size 64
step 8-bench_decode 30 python3 bench_decode.py --device cuda
