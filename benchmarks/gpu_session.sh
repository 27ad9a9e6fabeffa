#!/usr/bin/env bash
# Everything sdpalab runs on a lent GPU, in one go (few, full calls save device time).
# Usage on the GPU machine, from the repo root:  bash benchmarks/gpu_session.sh OUTDIR [parts...]
# parts: tests doctor demo qdecode model search train merge ncu multi (default: the first six). Each part logs to OUTDIR/<part>.log.
set -u
out=${1:?usage: gpu_session.sh OUTDIR [parts...]}; shift
parts=${*:-tests doctor demo qdecode model search}
mkdir -p "$out"
# A GPU machine with no package index: wheels left in .whl/ (pydantic, optuna, SALib and what they
# need, for its Python) are installed first, else the tests that import them cannot run there.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1 COLUMNS=160
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor SDPALAB_CACHE_DIR=$PWD/.cache/sdpalab
sdpalab() { python3 -m sdpalab.cli "$@"; }
stamp() { echo "# $(date -u +%FT%TZ) $*"; }
for part in $parts; do
  log=$out/$part.log
  case $part in
    tests)   stamp "python3 -m pytest -q -m gpu" >"$log"
             python3 -m pytest -q -rs -m gpu -p no:cacheprovider -W ignore --durations=15 >>"$log" 2>&1 ;;
    doctor)  stamp "sdpalab doctor" >"$log"; sdpalab doctor >>"$log" 2>&1 ;;
    demo)    stamp "sdpalab demo --out $out/demo" >"$log"; sdpalab demo --out "$out/demo" >>"$log" 2>&1 ;;
    qdecode) stamp "python3 benchmarks/qdecode_bench.py --out $out/qdecode.md" >"$log"
             python3 benchmarks/qdecode_bench.py --out "$out/qdecode.md" >>"$log" 2>&1 ;;
    model)   stamp "python3 benchmarks/model_bench.py --out $out/model.md" >"$log"
             python3 benchmarks/model_bench.py --out "$out/model.md" >>"$log" 2>&1 ;;
    search)  stamp "sdpalab search benchmarks/configs/decode-search-h100.yaml --out $out/search --trials 20" >"$log"
             sdpalab search benchmarks/configs/decode-search-h100.yaml --out "$out/search" --trials 20 >>"$log" 2>&1
             sdpalab pareto "$out/search" >>"$log" 2>&1 ;;
    train)   stamp "python3 benchmarks/train_bench.py --out $out/train.md --seqs 16384 --head-dims 128 --masks causal none" >"$log"
             python3 benchmarks/train_bench.py --out "$out/train.md" --seqs 16384 --head-dims 128 --masks causal none >>"$log" 2>&1 ;;
    merge)   stamp "qdecode_explore.py: splits and merge=fused at B=1, 128k" >"$log"
             for f in "int4,kivi4,kivi2 --block-n 32,64 --warps 1 --stages 3" "int8,fp8 --block-n 128 --warps 2 --stages 2"; do
               # shellcheck disable=SC2086
               PYTHONPATH=$PYTHONPATH:benchmarks python3 benchmarks/notes/qdecode_explore.py --shapes 1,131072 \
                 --formats $f --splits 0,32,64 --merge kernel,fused >>"$log" 2>&1
             done ;;
    multi)   stamp "python3 benchmarks/multi_gpu_bench.py --out $out/multi-gpu.md" >"$log"
             python3 benchmarks/multi_gpu_bench.py --out "$out/multi-gpu.md" >>"$log" 2>&1 ;;
    ncu)     # Nsight Compute on the fast kernel at B=8, 32k keys: stall reasons, and each SASS
             # line's samples (ncu-<format>-sass.csv)
             ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
             for f in ${NCU_FORMATS:-kivi4 kivi2 int4}; do
               stamp "ncu fast_kernel $f B=8 S=32768" >>"$log"
               "$ncu" --clock-control none -k regex:fast_kernel -s 2 -c 1 -f -o "$out/ncu-$f" \
                 --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
                 --section SchedulerStats --section Occupancy --section LaunchStats \
                 --section ComputeWorkloadAnalysis --section InstructionStats --section SourceCounters \
                 env PYTHONPATH=$PYTHONPATH:benchmarks python3 benchmarks/notes/qdecode_ncu.py --format "$f" ${NCU_CFG:+--cfg $NCU_CFG} >>"$log" 2>&1
               "$ncu" --import "$out/ncu-$f.ncu-rep" --print-details all >>"$log" 2>&1
               "$ncu" --import "$out/ncu-$f.ncu-rep" --page source --print-source sass --csv \
                 >"$out/ncu-$f-sass.csv" 2>>"$log"
             done ;;
    *) echo "unknown part $part" >&2 ;;
  esac
  echo "[$part exit $?]" >>"$log"
done
