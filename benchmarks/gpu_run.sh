#!/usr/bin/env bash
# The GPU run for issue "The CUDA path": kernel tests and GPU benchmarks on a lent H100/H200 (no registry there).
#
# Here (a machine with the package index), once, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl datasets==5.2.0 evaluate==0.4.6 einops pyarrow dill xxhash multiprocess fsspec
#   python3 -m pip download --no-deps --no-binary=:all: -d .whl mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
# Then run this script on the device with `.whl` carried. The machine has torch 2.11 + CUDA 13, triton and nvcc:
# causal-conv1d and mamba-ssm's selective scan are built from source for sm_90 only (MAX_JOBS=16).
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || true
export PYTHONPATH=/tmp/site:$PWD
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
for sdist in .whl/causal_conv1d-*.tar.gz .whl/causal-conv1d-*.tar.gz .whl/mamba_ssm-*.tar.gz .whl/mamba-ssm-*.tar.gz; do
    [ -f "$sdist" ] && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "$sdist"
done
python3 -c "import hf_longssm.modeling as m; print('kernels importable:', m.kernel_availability())"
mkdir -p "${OUT:-outputs/gpu}"
python3 -m pytest -m gpu tests/modeling/test_kernels_gpu.py -v 2>&1 | tee "${OUT:-outputs/gpu}/gpu_tests.log"
python3 benchmarks/gpu_throughput.py --output "${OUT:-outputs/gpu}/gpu_throughput.json"
# The same summary format as the CPU benchmarks (env "gpu"): copy it to benchmarks/results/summary_gpu.json here and
# `python benchmarks/run_all.py --render-only` puts its figures into the READMEs' tables, the device named.
python3 benchmarks/run_all.py --gpu_json "${OUT:-outputs/gpu}/gpu_throughput.json" \
    --output "${OUT:-outputs/gpu}/summary_gpu.json" --no-render
