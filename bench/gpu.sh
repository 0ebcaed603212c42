#!/usr/bin/env bash
# What to run when a GPU is lent, in at most 9 minutes: Atari 100k at configs/dreamerv3_atari100k.json
# (DreamerV3 at size S, train ratio 1024) on 3 games x 5 seeds, one compiled program per game, through
# bench/learning.py's Atari tasks. Writes bench/runs/gpu-<date>/atari100k/results.json (per game and seed: the
# final evaluation return and its human-normalised score; their mean and median over the games; env steps per
# second, the state's and the device's peak bytes per seed) with results.md and each game's records beside it.
#
#   bash bench/gpu.sh
#   GAMES=Pong SEEDS=2 STEPS=1016 EVAL_EPISODES=1 CONFIG=configs/dreamerv3_atari100k_small.json \
#       OUT=/tmp/gpu-check bash bench/gpu.sh          # a short check on CPU
set -euo pipefail
cd "$(dirname "$0")/.."

GAMES=${GAMES:-"Pong Boxing Krull"}  # each must have an atari-<game> task in bench/learning.py (--list)
SEEDS=${SEEDS:-5}
# Env steps per seed. The preset acts for its first 1,024 steps (training_start_time), then trains once per env
# step: 5 seeds' S-size updates, vmapped, with a game's compile and evaluation, must fit in a third of BUDGET_S.
# The default trains 512 updates a game; the full Atari 100k run is STEPS=100000 EVAL_EPISODES=10 (hours).
STEPS=${STEPS:-1536}
EVAL_EPISODES=${EVAL_EPISODES:-3}  # evaluation episodes per seed at the end of the run (the preset: 10)
CONFIG=${CONFIG:-configs/dreamerv3_atari100k.json}
# Seconds the Atari section may take (520: with 20 s of grace to stop, the script ends within 9 minutes); stopped
# then, it keeps the games it finished in results.json
BUDGET_S=${BUDGET_S:-520}
OUT=${OUT:-bench/runs/gpu-$(date +%Y%m%d-%H%M%S)}

mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi: running on $(uname -m) CPU" > "$OUT/nvidia-smi.txt"

# ---- Atari 100k -------------------------------------------------------------------------------------------
tasks=""
for game in $GAMES; do
    tasks+="${tasks:+,}atari-${game,,}"
done
echo "Atari 100k: $tasks, $SEEDS seeds x $STEPS env steps, $CONFIG, at most $BUDGET_S s -> $OUT/atari100k" >&2
status=0
# learning.py rewrites results.json after every task, so a run stopped by the timeout keeps the games it finished
timeout --signal=TERM --kill-after=20 "$BUDGET_S" \
    python3 bench/learning.py --tasks "$tasks" --config "$CONFIG" --seeds "$SEEDS" --steps "$STEPS" \
        --set eval_every="$STEPS" --set eval_episodes="$EVAL_EPISODES" --no_diagnostics --no_progress \
        --out "$OUT/atari100k" > /dev/null 2> >(tee "$OUT/atari100k.log" >&2) || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "Atari 100k stopped after $BUDGET_S s: $OUT/atari100k/results.json holds the games finished before" >&2
elif [ "$status" -ne 0 ]; then
    echo "Atari 100k failed with exit code $status (log: $OUT/atari100k.log)" >&2
    exit "$status"
fi

# ---- DMC: reserved for a DeepMind Control section, writing under "$OUT/dmc" ----------------------------------
# It shares the 9 minutes: lower BUDGET_S (or STEPS) above by its share when it is added.

echo "results: $OUT" >&2
