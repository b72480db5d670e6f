#!/bin/bash
# The performance issue's GPU measurements in one call, each under its own time limit so that a slow compilation
# cannot eat the others' time (at most 9 minutes 10 seconds in all). Tables go to stdout and to gpu_goals.log, JSON
# to the folder given (default $OUT, else ./gpu-results). Each benchmark writes its eager rows before compiling, so
# a time limit hit during a compilation still leaves them; a path out of memory is recorded in its JSON's "failed"
# (the fp32 reference at batch 32 does not fit on an 80-GB H100). The exit status is the number of failed steps.
#
#     bash benchmarks/gpu_goals.sh /path/to/results            # the training and inference goals
#     bash benchmarks/gpu_goals.sh /path/to/results restore    # tiling and batch restoration, in a call of its own
#
# Rows: training at 8 x 128² (PromptIR and PIP, official sizes: the eager bf16 path against the whole-model
# compiled one, CUDA graphs; and the checkpointed path, the one whose activation floor measured on the CPU is
# under the 8-GiB goal), batch 32 memory with activation checkpointing, PromptIR inference at 1,024²
# (regional and whole-model compilation, each timed and reported in its own phase), then the 200-step toy-loss
# agreement of the eager bf16 and compiled training paths with fp32 (curves only, on a small PromptIR).
# `restore` (at most 9 minutes 10 seconds): an official-size Restormer in bf16, tiled at 512 px with restore()'s
# statistics passes (at most 6, tolerance 0.01), against the whole image at 2,048² (seams) and alone at 8,192²
# (peak GPU memory; the input and output stay in host memory, as restore() keeps them); then the images/s of
# batch restoration (`training.batch_restore`, one process) with the shipped weights on 200 generated 512² images.
set -u
RESULTS=${1:-${OUT:-gpu-results}}
PART=${2:-goals}
case "$PART" in
    goals|restore) ;;
    *) echo "usage: bash benchmarks/gpu_goals.sh [RESULTS_DIR] [goals|restore]" >&2; exit 64;;
esac
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/gpu_goals.log") 2>&1  # the tables come back even when tracebacks fill the screen
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=()

run() {  # run LIMIT_SECONDS SCRIPT ARGS...: one benchmark under its limit, then its exit status
    local limit=$1 status
    shift
    echo "=== python3 $* (limit ${limit} s, started at ${SECONDS} s)"
    timeout "$limit" python3 "$@"
    status=$?
    echo "=== exit status ${status} at ${SECONDS} s"
    if [ "$status" -ne 0 ]; then failed+=("$(basename "$1") ${status}"); fi
}

if [ "$PART" = goals ]; then
# The toy curves run a PromptIR of one block per level: an official-size step is bound by kernel launches (about
# 250 ms whatever the batch), so 200 steps on each eager path would not fit in the call with the compilation.
TOY_PROMPTIR='{"dim": 24, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8]}'
train=(benchmarks/bench_train.py --official-size --batch 8 --size 128 --device cuda --steps 10 --repeats 2
       --curve-steps 0)
run 170 "${train[@]}" --model-type promptir \
    --paths channels-last+bf16 channels-last+bf16+checkpointing channels-last+bf16+compile-model \
    --json "$RESULTS/train_promptir_batch8.json"
run 150 "${train[@]}" --model-type pip \
    --paths channels-last+bf16 channels-last+bf16+checkpointing channels-last+bf16+compile-model \
    --json "$RESULTS/train_pip_batch8.json"
run 50 benchmarks/bench_train.py --official-size --model-type promptir --batch 32 --size 128 --device cuda \
    --steps 3 --repeats 1 --curve-steps 0 --paths channels-last+bf16+checkpointing \
    --json "$RESULTS/train_promptir_batch32_checkpointing.json"
run 100 benchmarks/bench_infer.py --random promptir --size 1024 --device cuda --repeats 5 \
    --paths channels-last+bf16 channels-last+bf16+compile channels-last+bf16+compile-model \
    --json "$RESULTS/infer_promptir_1024.json"
run 80 benchmarks/bench_train.py --model-type promptir --model-config "$TOY_PROMPTIR" --curve-only --device cuda \
    --curve-steps 200 --curve-batch 4 --curve-size 32 --paths channels-last+bf16 channels-last+bf16+compile-model \
    --json "$RESULTS/train_promptir_toy_curve.json"
fi
if [ "$PART" = restore ]; then
tiles=(benchmarks/bench_tiling.py --dim 48 --tile 512 --overlap 32 --device cuda --dtype bf16 --statistics-passes 6
       --statistics-tolerance 0.01)
run 190 "${tiles[@]}" --size 2048 --json "$RESULTS/tiling_2048.json"
run 260 "${tiles[@]}" --size 8192 --tiled-only --json "$RESULTS/tiling_8192.json"
run 100 benchmarks/bench_batch_restore.py --model modeling/demo --images 200 --size 512 --processes 1 --timeout 90 \
    --json "$RESULTS/batch_restore_gpu.json"
fi
echo "=== ${#failed[@]} step(s) failed: ${failed[*]:-none} (${SECONDS} s in all)"
exit "${#failed[@]}"
