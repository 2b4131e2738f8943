#!/usr/bin/env bash
# The GPU check, on one machine with a GPU and no internet: is decoding lossless there (in the precision-aware sense
# of specpolicy.decoding.precision, not bit-equality, which bf16 cannot give), and how fast is it?
#
#   bash experiments/recipes/gpu_check.sh                     # CUDA, the embedded model; writes runs/gpu_check/gpu_check.json
#   DEVICE=cpu PROMPTS=2 TOKENS=8 bash experiments/recipes/gpu_check.sh   # the same steps on the CPU, tiny (a smoke test)
#
# Steps (each a command of this repository, results merged into one JSON):
#   0. the decoder's CUDA tests (tests/decoding/test_cuda.py, marked gpu): lossless policies vs generate() up to
#      near-ties and the lean engine vs transformers' modules, in float32 and bfloat16;
#   1. experiments.precision in bfloat16 and float32: every lossless built-in vs generate(); near-ties vs mismatches
#      and the float32 self-consistency check (a mismatch is a bug; a near-tie is not);
#   2. experiments.bench on the embedded model: tokens/s and TPF of the policies against transformers' peers;
#   3. experiments.random_model + experiments.bench on a randomly initialised ~1B-parameter DeepSeek-V3 model (MLA,
#      MoE, one MTP layer) in bf16: the cost structure (c(m), drafter cost) at a realistic size (random weights:
#      acceptance is chance, so its speedups say nothing about real models).
# SIZE=smoke builds the 61-layer DeepSeek-V3 narrow instead (what DEVICE=cpu smoke runs use).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICE=${DEVICE:-cuda}
PROMPTS=${PROMPTS:-20}
TOKENS=${TOKENS:-64}
OUT=${OUT:-runs/gpu_check}
SIZE=${SIZE:-1b}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
    python -m pytest -q -m gpu tests/decoding/test_cuda.py -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml"
fi
python -m experiments.precision model.device="$DEVICE" 'dtypes=[bfloat16,float32]' data.n_prompts="$PROMPTS" \
    max_new_tokens="$TOKENS" probe_prompts=2 hydra.run.dir="$OUT/precision"
python -m experiments.bench model.device="$DEVICE" data.n_prompts="$PROMPTS" new_tokens="$TOKENS" repeats=2 \
    hydra.run.dir="$OUT/bench"
[ -f "$OUT/dsv3/random_model.json" ] || python -m experiments.random_model size="$SIZE" out="$OUT/dsv3" \
    hydra.run.dir="$OUT/random_model"
python -m experiments.bench model.path="$OUT/dsv3" model.device="$DEVICE" model.dtype=bfloat16 \
    data.n_prompts="$(( PROMPTS < 4 ? PROMPTS : 4 ))" new_tokens="$TOKENS" repeats=1 'peers=[generate,use_mtp]' \
    'policies=[ar,"fixed:{\"k\":1}","fixed:{\"k\":2}"]' hydra.run.dir="$OUT/bench_dsv3"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
precision = json.loads((out / "precision" / "precision.json").read_text())["results"]
bench = json.loads((out / "bench" / "bench.json").read_text())
bench_dsv3 = json.loads((out / "bench_dsv3" / "bench.json").read_text())
random_model = json.loads((out / "dsv3" / "random_model.json").read_text())
bugs = [f"{r['dtype']}:{label}" for r in precision for label, p in r["policies"].items()
        if p["mismatch"] or p["consistency_mismatches"]]
cuda_tests = (out / "cuda_tests.xml").read_text() if (out / "cuda_tests.xml").exists() else None
summary = {"precision": precision, "bench": bench, "bench_random_deepseek_v3": bench_dsv3, "random_model": random_model,
           "cuda_tests_junit": cuda_tests, "lossless_bugs": bugs, "ok": not bugs}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
print(f"gpu_check: {'ok' if not bugs else 'BUGS: ' + ', '.join(bugs)}; results in {out / 'gpu_check.json'}")
sys.exit(0 if not bugs else 1)
PY
