#!/usr/bin/env bash
# What to run when a GPU is lent, in at most 9 minutes, through bench/learning.py's tasks, one compiled program
# per task (its seeds vmapped):
# - atari: Atari 100k at configs/dreamerv3_atari100k.json (DreamerV3 at size S, train ratio 1024) on 3 games x
#   5 seeds; results.json holds per game and seed the final evaluation return and its human-normalised score,
#   their mean and median over the games;
# - dmc: DeepMind Control at configs/dreamerv3_dmc_proprio.json (states) and configs/dreamerv3_dmc_vision.json
#   (64x64 pixels), size S, train ratio 512, on 3 tasks x 5 seeds each; results.json holds each seed's
#   training-episode returns (DreamerV3's DMC scores are those) beside the random policy's.
# Each section writes bench/runs/gpu-<date>/<section>/results.json (with env steps per second and the state's
# and the device's peak bytes per seed) with results.md and each task's records beside it. A section stopped by
# its time budget keeps the tasks it finished. SECTIONS picks the sections (default: both, the time split).
#
#   bash bench/gpu.sh
#   SECTIONS=dmc bash bench/gpu.sh                    # DMC alone, with the whole budget
#   GAMES=Pong SEEDS=2 STEPS=1016 EVAL_EPISODES=1 CONFIG=configs/dreamerv3_atari100k_small.json \
#       OUT=/tmp/gpu-check SECTIONS=atari bash bench/gpu.sh          # a short check on CPU
#   DMC_TASKS=cartpole-balance SEEDS=2 DMC_STEPS=1100 DMC_SMALL=1 OUT=/tmp/gpu-check SECTIONS=dmc bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SECTIONS=${SECTIONS:-"atari dmc"}
GAMES=${GAMES:-"Pong Boxing Krull"}  # each must have an atari-<game> task in bench/learning.py (--list)
SEEDS=${SEEDS:-5}
# Env steps per seed. The preset acts for its first 1,024 steps (training_start_time), then trains once per env
# step: 5 seeds' S-size updates, vmapped, with a game's compile and evaluation, must fit in a third of its budget.
# The default trains 512 updates a game; the full Atari 100k run is STEPS=100000 EVAL_EPISODES=10 (hours).
STEPS=${STEPS:-1536}
EVAL_EPISODES=${EVAL_EPISODES:-3}  # evaluation episodes per seed at the end of the run (the preset: 10)
CONFIG=${CONFIG:-configs/dreamerv3_atari100k.json}
# DMC tasks (each must have a dmc-<task> task in bench/learning.py) and env steps per seed: the presets train
# from step 1,024 once every 2 steps; the full runs are 500,000 (states) and 1,000,000 (pixels) steps.
DMC_TASKS=${DMC_TASKS:-"walker-walk cheetah-run cartpole-swingup"}
DMC_STEPS=${DMC_STEPS:-2048}
DMC_SMALL=${DMC_SMALL:-}  # set: the CPU-size presets (a check of the script on CPU)
# Seconds all sections may take (520: with 20 s of grace to stop, the script ends within 9 minutes), shared
# equally by the sections run
BUDGET_S=${BUDGET_S:-520}
OUT=${OUT:-bench/runs/gpu-$(date +%Y%m%d-%H%M%S)}

mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi: running on $(uname -m) CPU" > "$OUT/nvidia-smi.txt"
read -r -a sections <<< "$SECTIONS"
runs=0
for section in "${sections[@]}"; do
    case "$section" in
        atari) runs=$((runs + 1)) ;;
        dmc) runs=$((runs + 2)) ;;  # states and pixels
        *) echo "error: SECTIONS names '$section'; the sections are atari and dmc" >&2; exit 2 ;;
    esac
done
share=$((BUDGET_S / runs))

# run NAME TASKS CONFIG STEPS EXTRA...: learning.py on TASKS (comma-separated) for at most $share seconds; it
# rewrites results.json after every task, so a run stopped by the timeout keeps the tasks it finished
run() {
    local name=$1 tasks=$2 config=$3 steps=$4 status=0
    shift 4
    echo "$name: $tasks, $SEEDS seeds x $steps env steps, $config, at most $share s -> $OUT/$name" >&2
    timeout --signal=TERM --kill-after=20 "$share" \
        python3 bench/learning.py --tasks "$tasks" --config "$config" --seeds "$SEEDS" --steps "$steps" \
            --no_diagnostics --no_progress --out "$OUT/$name" "$@" \
            > /dev/null 2> >(tee "$OUT/$name.log" >&2) || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "$name stopped after $share s: $OUT/$name/results.json holds the tasks finished before" >&2
    elif [ "$status" -ne 0 ]; then
        echo "$name failed with exit code $status (log: $OUT/$name.log)" >&2
        exit "$status"
    fi
}

join() { local prefix=$1 out=""; shift; for item in "$@"; do out+="${out:+,}$prefix${item,,}"; done; echo "$out"; }

for section in "${sections[@]}"; do
    if [ "$section" = atari ]; then
        read -r -a games <<< "$GAMES"
        run atari100k "$(join atari- "${games[@]}")" "$CONFIG" "$STEPS" \
            --set eval_every="$STEPS" --set eval_episodes="$EVAL_EPISODES"
    else
        read -r -a dmc <<< "$DMC_TASKS"
        size=${DMC_SMALL:+_small}
        run dmc-proprio "$(join dmc- "${dmc[@]}")" "configs/dreamerv3_dmc_proprio$size.json" "$DMC_STEPS" \
            --set eval_every=0
        run dmc-vision "$(join dmc- "${dmc[@]}")" "configs/dreamerv3_dmc_vision$size.json" "$DMC_STEPS" \
            --set eval_every=0
    fi
done

echo "results: $OUT" >&2
