#!/usr/bin/env bash
# Wheels of bionas's dependencies that the lent GPU machine's image lacks (its python3 is
# 3.12 with torch, torchvision, numpy, pyarrow, click, tqdm, scikit-learn, matplotlib,
# onnx, onnxruntime, tensorboard, psutil, pytest). Run here, in the repo root, before a
# device session; the device call then carries .whl (58 MB; the limit is 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    polars==2.1.0 polars-runtime-32==2.1.0 webdataset==1.0.2 braceexpand==0.1.7 zstandard==0.25.0
du -sh .whl
