#!/usr/bin/env bash
# On a CUDA machine: builds the CUDA extension, runs the whole pytest suite on the GPU,
# compute-sanitizer memcheck over the op tests, and the op benchmark. Logs go to $OUT (or ./gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
# ../shared (models, data) is not on the device machines; a copy carried as .shared/ stands in.
[ -d .shared ] && export LLMINT8_SHARED="$PWD/.shared"
# bitsandbytes for the benchmarks' comparison columns: its package folder and CUDA library, carried as .bnb/.
[ -d .bnb ] && export PYTHONPATH="$PWD/.bnb${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu_out}"; mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST="8.0+PTX;9.0a" MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
# Some images put a GCC first on PATH whose link step pulls in a static libstdc++; a second copy of
# libstdc++ inside _C.so beside torch's shared one crashes on the first formatted error message.
# The system compiler links the shared library like torch does.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; fi
summary() { echo "== $1: $2" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/summary.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"

# This machine is offline, so missing packages come as wheels in .whl/ (carried; a carried folder
# must be named in every call's carry list, or the device removes it): nvidia-cutlass (headers for
# the fused sm90 GEMM), gguf, and transformers >= 5.23 with its huggingface-hub (Gemma-3 GGUF).
wheels=$(ls .whl/*.whl 2>/dev/null)
[ -n "$wheels" ] && python3 -m pip install -q --no-deps $wheels 2>&1 | tail -3
summary cutlass "$(python3 -m pip show nvidia-cutlass 2>/dev/null | grep -E '^Version' ||
  echo 'not installed: the fused sm90 GEMM is left out of the build')"

# The build takes most of a short device call. It leaves $OUT/_C.so.xz and the hash of the sources
# it was built from; carry that file back as PREBUILT=path/_C.so.xz (the .sources file beside it) to
# skip the build while csrc/ and setup.py are unchanged, e.g. when only Python or benchmarks changed.
sources_hash() { find csrc setup.py -type f | sort | xargs sha256sum | sha256sum | cut -d' ' -f1; }
start=$SECONDS
if [ -n "${PREBUILT:-}" ] && [ "$(cat "${PREBUILT%.xz}.sources" 2>/dev/null)" = "$(sources_hash)" ]; then
  xz -dc "$PREBUILT" >python/llmint8/_C.so && export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
  summary build "reused $PREBUILT (sources unchanged)"
else
  [ -n "${PREBUILT:-}" ] && summary build "PREBUILT $PREBUILT is stale or unreadable: building"
  python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
  summary build "rc=$? in $((SECONDS - start)) s"
  xz -T0 -3 -c python/llmint8/_C.so >"$OUT/_C.so.xz" && sources_hash >"$OUT/_C.so.sources"
fi
ldd python/llmint8/_C*.so | grep -q libstdc++ || summary build "WARNING: _C.so does not link the shared libstdc++"
echo "code in _C.so: $(cuobjdump --list-elf --list-ptx python/llmint8/_C*.so | grep -oE '(sm|compute)_[0-9a-z]+' | sort | uniq -c | tr -s ' \n' ' ')" | tee -a "$OUT/summary.txt"

start=$SECONDS
python3 -m pytest -q -rs tests >"$OUT/pytest.log" 2>&1
summary "pytest (GPU)" "rc=$? in $((SECONDS - start)) s: $(tail -1 "$OUT/pytest.log")"

start=$SECONDS
compute-sanitizer --tool memcheck --error-exitcode 99 python3 -m pytest -q -x tests/test_ops.py \
  -k "not 4096 and not 300" >"$OUT/memcheck.log" 2>&1
summary "memcheck tests/test_ops.py (M<=17, K,N<=172)" "rc=$? in $((SECONDS - start)) s: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1) $(grep -E 'passed|failed' "$OUT/memcheck.log" | tail -1)"

# BENCHMARKS="ops linear" (the default) runs benchmarks/bench_ops.py and bench_linear.py; add
# "generate" for the OPT-6.7B-shaped end-to-end run, "decode_ceiling" for its decode step with
# every int8 layer stood in for by a kernel that only reads the weight (needs Triton).
for bench in ${BENCHMARKS-ops linear}; do
  start=$SECONDS
  (cd benchmarks && python3 "bench_$bench.py" --out "$OUT") >"$OUT/bench_$bench.log" 2>&1
  summary "bench_$bench" "rc=$? in $((SECONDS - start)) s"
  cat "$OUT/bench_$bench.log"
done
echo; cat "$OUT/summary.txt"
