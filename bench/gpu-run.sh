#!/usr/bin/env bash
# The diffusion benchmarks on a lent GPU machine (H100/H200, no package index), in stages that
# each fit one device call. BENCHMARKS.md ("GPU: how to measure") is the walk-through.
#
#   bench/gpu-run.sh fetch     here, on the CPU machine, once: the wheels of bench/gpu-wheels.txt
#                              into .whl/ (git-ignored, about 24 MB), for Python 3.12 x86_64
#   bench/gpu-run.sh sd15      there: SD1.5 512², 30 steps. Plain diffusers against the service,
#                              eager, batch 1/2/4/8, then image-to-image and inpaint at 8; then
#                              the service compiled (reduce-overhead) at batch 8. About 7 minutes.
#   bench/gpu-run.sh sdxl      there: SDXL 1024², 30 steps, eager, batch 1/2/4, image-to-image
#                              and inpaint at 4. About 5 minutes.
#   bench/gpu-run.sh sweep     there: SD1.5, the service compiled at every batch size (1/2/4/8;
#                              $COMPILE_MODE, default reduce-overhead; max-autotune compiles far
#                              longer). The compile alone takes minutes: a session with time to spare.
#
# There, the command is run by the device tool with carry [".whl"]. Tables (markdown), JSON and
# charts (PNG), the environment (env.txt) and the whole log (log.txt) are written under $OUT,
# each table after every row, so a stage cut short still returns what it measured. A stage
# writes at most 8 files, the most the device tool brings back. Each bench step has a time
# budget (rows not started by then are listed as skipped) and a hard timeout.
#
# Check the script itself here before spending device minutes (tiny models, CPU, a few seconds
# a row; the wheels for this machine's Python in a scratch .whl):
#   PYVER=3.11 bench/gpu-run.sh fetch && SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/gpu-run bench/gpu-run.sh sd15
#   bench/gpu-run.sh fetch     # then the real wheels again
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-}
python=${PYTHON:-python3}
pyver=${PYVER:-3.12}

if [[ $stage == fetch ]]; then
    rm -rf .whl && mkdir -p .whl
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --abi "cp${pyver/./}" --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl -r bench/gpu-wheels.txt
fi
case $stage in sd15 | sdxl | sweep) ;; *)
    echo "usage: bench/gpu-run.sh fetch|sd15|sdxl|sweep (see the top of this file)" >&2
    exit 2
    ;;
esac
: "${OUT:?OUT must name the folder for results (the device tool sets it)}"
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo ".whl/ is empty: run 'bench/gpu-run.sh fetch' on the CPU machine and carry .whl" >&2
    exit 2
fi
mkdir -p "$OUT"
log=$OUT/log.txt
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$log" || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Inductor and Triton caches stay off $OUT (thousands of files); they last as long as the machine.
cache=/tmp/compile-cache

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit \
        --format=csv 2>&1
    nproc
    "$python" -c 'import sys, importlib.metadata as m, torch
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "absent"
print("python", sys.version.split()[0], "cuda", torch.version.cuda, *(f"{p} {version(p)}" for p in
      ("torch", "diffusers", "transformers", "huggingface-hub", "litestar", "msgspec", "nvidia-ml-py")))
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")' 2>&1
} | tee "$OUT/env.txt"

sd15=sd15 sdxl=sdxl smoke=()
if [[ ${SMOKE:-} == 1 ]]; then
    sd15=tiny-sd15 sdxl=tiny-sdxl smoke=(--steps 2 --images 2 --repeats 1 --compile-backend eager)
fi

# step SECONDS ARGS...: one bench run, stopped at SECONDS whatever happens (its rows so far stay).
step() {
    local limit=$1
    shift
    echo "== python3 -m bench.diffusion $* ${smoke[*]}" | tee -a "$log"
    timeout -k 15 "$limit" "$python" -m bench.diffusion --out "$OUT" --compile-cache "$cache" "$@" "${smoke[@]}" 2>&1 \
        | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [[ $rc == 124 || $rc == 137 ]] && echo "== stopped at its ${limit} s limit" | tee -a "$log"
    return 0
}

case $stage in
sd15)
    step 260 --arch $sd15 --batch-sizes 1,2,4,8 --images 8 --repeats 3 --budget-s 200
    step 260 --arch $sd15 --batch-sizes 8 --ops text-to-image --modes service --images 16 --repeats 3 \
        --compile --compile-mode reduce-overhead --budget-s 230
    ;;
sdxl)
    step 330 --arch $sdxl --batch-sizes 1,2,4 --images 4 --repeats 3 --budget-s 270
    ;;
sweep)
    step 580 --arch $sd15 --batch-sizes 1,2,4,8 --ops text-to-image --modes service --images 16 --repeats 3 \
        --compile --compile-mode "${COMPILE_MODE:-reduce-overhead}" --budget-s 540
    ;;
esac
echo "== done; results in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$log"
