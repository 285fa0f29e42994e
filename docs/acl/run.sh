#!/usr/bin/env bash
# The comparison of docs/acl/README.md: four families meta-trained on the same episodes (configs/acl/
# episodes-debug.yaml), with the ACL objective and without its backward-transfer terms, then each evaluated on
# fresh test episodes. One training at a time; a finished run is skipped, so the script can be restarted.
#
# The models are the debug presets with 2 layers, the episodes those of configs/acl/episodes-debug.yaml with
# 2 tasks (61 tokens, ACL's A-then-B setting): the CPU budget of this comparison. The sliding window (12 tokens, a
# reach of 22 over 2 layers) is shorter than the 26 tokens between task A's last demonstration and the first
# question on A after task B.
#
#   bash docs/acl/run.sh                       # STEPS=400 SEEDS=1234 OUT=runs/acl by default
#   STEPS=50 SEEDS="1 2" OUT=/tmp/acl bash docs/acl/run.sh
#   MODELS=srwm SEEDS=1235 bash docs/acl/run.sh  # a second seed of one model; the table takes every run in OUT
set -euo pipefail
export OMP_NUM_THREADS=1
STEPS=${STEPS:-400}
SEEDS=${SEEDS:-1234}
OUT=${OUT:-runs/acl}
mkdir -p "$OUT"
read -ra MODELS <<< "${MODELS:-srwm transformer-window titans-lmm hope}"
declare -A ARGS=(
  [srwm]='--model.preset srwm-debug --model.overrides {"n_layer":2}'
  [titans-lmm]='--model.preset titans-lmm-debug --model.overrides {"n_layer":2}'
  [hope]='--model.preset hope-debug --model.overrides {"n_layer":2}'
  [transformer-window]='--model.preset debug --model.overrides {"n_layer":2,"sliding_window":12}'
)
EPISODES='--data.episodes.n_tasks 2 --data.seq_len 64'  # 61-token episodes
for seed in $SEEDS; do
  for model in "${MODELS[@]}"; do
    for objective in acl current; do
      run=$OUT/$model-$objective-$seed
      [ -f "$run/eval/in_context.json" ] && continue
      # shellcheck disable=SC2086  # EPISODES and ARGS hold several flags
      hope fit --config configs/acl/episodes-debug.yaml $EPISODES ${ARGS[$model]} \
        --data.episodes.objective "$objective" \
        --seed_everything "$seed" --trainer.max_steps "$STEPS" --trainer.val_check_interval $((STEPS / 4)) \
        --trainer.default_root_dir "$run" --checkpoint.every_n_train_steps "$STEPS" > "$run.log" 2>&1 \
        || { echo "failed: $run (see $run.log)"; exit 1; }
      hope eval in-context-retention --checkpoint "$run/checkpoints/last.ckpt" --out_dir "$run/eval" \
        --progress false >> "$run.log" 2>&1
      echo "done: $run"
    done
  done
done
python -m hope.evaluation.acl_compare "$OUT" --out docs/acl
