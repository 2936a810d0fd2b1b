#!/usr/bin/env bash
# The prepared GPU check (one GPU, under 8 minutes): the split-device test, the ablation and patching benchmarks
# on a random-init model of 2.7 B parameters in bfloat16, and the default workflow (both demo models, bfloat16)
# on CUDA. Every number goes to $OUT (default benchmarks/gpu_results): summary.txt, environment.json,
# ablation.json, patching.json, one log per step, and the workflow's benchmark files.
#
#     bash benchmarks/gpu_check.sh              # needs torch with CUDA and requirements.txt installed
#
# With the device tool, carry the demo models trained by a CPU run: results/models/demo,
# results/models/demo-qwen3 and results/demo (about 15 MB), and OUT=$OUT.
#
# Each step has its own time limit (480 s in all), so one slow step cannot take the others' time; a failed step
# is recorded and the next one runs. The script's exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_results}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
export PYTHONUNBUFFERED=1 KMAP_CACHE="$OUT/cache" HF_HUB_OFFLINE=1

step() { # step NAME LIMIT_S COMMAND...: run, time, record
    local name=$1 limit=$2 start rc
    shift 2
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%-16s rc=%-3s %4d s\n' "$name" "$rc" $((SECONDS - start)) | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
}

python - >"$OUT/environment.json" <<'EOF' || { echo "no usable torch/CUDA: install torch with CUDA and requirements.txt" | tee -a "$SUMMARY"; exit 1; }
import json, platform, torch, transformers
assert torch.cuda.is_available(), "CUDA is not available to torch"
props = torch.cuda.get_device_properties(0)
print(json.dumps({
    "gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
    "python": platform.python_version(),
}, indent=1))
EOF
cat "$OUT/environment.json"

# 1. Every method on a model split between cuda:0 and the CPU (skipped without CUDA elsewhere).
step split_device 60 python -m pytest -q -p no:cacheprovider tests/test_devices.py

# 2. One random-init Llama of 32 layers x 3072 (2.7 B parameters), built once for both benchmarks.
RANDOM="$OUT/random-32x3072"
step build_random 90 python -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from common import random_model
import shutil
built = random_model('32x3072', Path('$OUT'))
shutil.move(str(built), '$RANDOM') if str(built) != '$RANDOM' else None
"
# Batched ablation vs the per-layer loop: 8 prompts x 33 variants (one batch of 264 rows), 32 new tokens.
step ablation 90 python benchmarks/bench_ablation.py --model "$RANDOM" --device cuda --dtype bfloat16 \
    --domain age --prompts-n 8 --rows 264 --loop-batch 8 --max-new-tokens 32 --repeats 1 --json "$OUT/ablation.json"
# The patching sweep vs the naive loop.
step patching 60 python benchmarks/bench_patching.py --model "$RANDOM" --device cuda --dtype bfloat16 \
    --domain age --multi-token first_token --pairs-n 32 --batch-size 32 --repeats 2 --json "$OUT/patching.json"
rm -rf "$RANDOM"

# 3. The default workflow on CUDA in bfloat16 (the demo models train on the CPU, then every method runs on the GPU).
cat >"$OUT/gpu_check.yaml" <<EOF
results: $OUT/workflow
models:
  demo: {dtype: bfloat16}
  demo-qwen3: {dtype: bfloat16}
EOF
# Training both demo models takes 10-15 min on 2 CPU threads each, more than this check has: demo models trained
# here (results/models/demo*, results/demo/*, carried to the GPU machine) are reused, so the workflow starts
# at the methods. Without them it trains them and may run out of its time limit (recorded in summary.txt).
for built in results/models/demo results/models/demo-qwen3 results/demo; do
    [ -e "$built" ] && mkdir -p "$OUT/workflow/$(dirname "${built#results/}")" && cp -r "$built" "$OUT/workflow/${built#results/}"
done
# Newer than the checkout's knowledge base, so Snakemake's mtime trigger keeps them.
[ -d "$OUT/workflow" ] && find "$OUT/workflow" -exec touch {} +
step workflow 180 snakemake --cores "$(nproc)" --configfile config/config.yaml "$OUT/gpu_check.yaml"
if [ -d "$OUT/workflow/benchmarks" ]; then
    python - "$OUT/workflow/benchmarks" >"$OUT/workflow_jobs.tsv" <<'EOF'
import sys
from pathlib import Path
print("rule\tjob\tseconds")
for tsv in sorted(Path(sys.argv[1]).rglob("*.tsv")):
    seconds = tsv.read_text().splitlines()[1].split("\t")[0]
    print(f"{tsv.parent.parent.name}\t{tsv.parent.name}/{tsv.stem}\t{seconds}")
EOF
fi

echo "failed steps: $FAILED" | tee -a "$SUMMARY"
exit "$FAILED"
