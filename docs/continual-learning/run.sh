#!/usr/bin/env bash
# Every number of docs/continual-learning/README.md. A finished run (its JSON or checkpoint exists) is skipped,
# so the script can be stopped and restarted. CPU, one thread.
#
#   bash docs/continual-learning/run.sh                     # OUT=runs/cl by default
#   MODELS=titans-mac bash docs/continual-learning/run.sh   # a second copy, in another shell, shares the work
#
# Stages: 1. models on the same tokens, 2. held-out perplexity (no learning, dynamic evaluation, test-time
# learning), 3. the four-domain sequence, 4. the cost and the gain of in-context CMS learning in pretraining,
# 5. the tables and the plot (docs/continual-learning/results/).
set -euo pipefail
export OMP_NUM_THREADS=1
OUT=${OUT:-runs/cl}
DOC=docs/continual-learning
mkdir -p "$OUT" "$DOC/results"

# 1. Models: the debug presets on the same 160 steps x 8 x 256 tokens of the default corpus (data seed 1234,
# seed 1234, lr 2e-3, 10 warm-up steps, cosine to 0.1x, 16 validation blocks): configs/pretrain/compare/*.yaml with
# the 160-step schedule of configs/pretrain/hope-debug.yaml. HOPE twice: as preset (hope_safe_step on) and with
# in-context CMS learning in pretraining (cms_learn_in_context with the reconstruction objective, inner lr 3e-3).
SCHEDULE=(--trainer.max_steps 160 --trainer.val_check_interval 80 --checkpoint.every_n_train_steps 80
  --model.optim.warmup_steps 10 --data.max_val_blocks 16)
declare -A FIT=(
  [transformer]='--config configs/pretrain/compare/transformer.yaml'
  [titans-mac]='--config configs/pretrain/compare/titans-mac.yaml'
  [hope]='--config configs/pretrain/compare/hope.yaml'
  [hope-icl]='--config configs/pretrain/compare/hope.yaml --model.overrides {"cms_learn_in_context":true,"cms_objective":"reconstruction","cms_inner_lr":3e-3}'
)
read -r -a MODELS <<< "${MODELS-transformer titans-mac hope hope-icl}"
for model in "${MODELS[@]}"; do
  run=$OUT/$model
  [ -f "$run/checkpoints/step000160.ckpt" ] && continue
  mkdir -p "$run"
  # shellcheck disable=SC2086  # FIT holds several flags
  hope fit ${FIT[$model]} "${SCHEDULE[@]}" --trainer.default_root_dir "$run" > "$run.log" 2>&1 \
    || { echo "failed: $run (see $run.log)"; exit 1; }
  echo "trained: $run"
done

# The domains: real text from this machine's own files (bench/local_corpora.py), 0.5 MB each: GNU info manuals,
# Debian changelogs, glibc locale definitions, Vim help. None is in the default corpus (the Python standard library).
CORPORA=$OUT/corpora
[ -f "$CORPORA/manifest.json" ] || python bench/local_corpora.py --out "$CORPORA" --domains info changelogs locales vim \
  --max_mb 0.5
# Held-out perplexity reads 3 documents per domain, the first 4000 bytes of each, spread over the folder.
for domain in info changelogs; do
  [ -d "$OUT/heldout/$domain" ] && continue
  mkdir -p "$OUT/heldout/$domain"
  files=("$CORPORA/$domain"/*.txt)
  for i in 0 1 2; do
    f=${files[$((i * ${#files[@]} / 3 + ${#files[@]} / 6))]}
    head -c 4000 "$f" > "$OUT/heldout/$domain/$(basename "$f")"
  done
done

# 2. Held-out perplexity, rolling windows of 256 tokens, what was learned kept for the document (--state document):
# no learning, dynamic evaluation (all models) and test-time learning (HOPE). Step sizes are tuned on info (grids
# below) and then fixed for changelogs; HOPE with in-context CMS learning takes HOPE's dynamic-evaluation lr.
ppl() {  # ppl NAME MODEL SOURCE [flags...]: one report, skipped when it exists
  local out=$OUT/ppl/$1.json ck=$OUT/$2/checkpoints/last.ckpt src=$3
  shift 3
  [ -f "$out" ] && return
  mkdir -p "$OUT/ppl"
  if ! hope eval perplexity --checkpoint "$ck" --source "$src" --window 256 --state document --device cpu \
    --progress false --out "$out" "$@" >> "$OUT/ppl.log" 2>&1; then
    [ -f "$out" ] || { echo "failed: $out (see $OUT/ppl.log)"; exit 1; }
    echo "diverged: $out (a non-finite log-likelihood exits 1 after writing the report; it shows as nan)"
    return
  fi
  echo "scored: $out"
}
best() {  # best KEY FIELD FILES: report[KEY][FIELD] of the least perplexity, NaN last
  python -c 'import json, sys; r = min((json.load(open(f)) for f in sys.argv[3:]), key=lambda d: min(1e30, d["token_perplexity"]))
print(r[sys.argv[1]][sys.argv[2]])' "$@"
}
DYN_GRID=(3e-4 1e-3 3e-3)
TTL_GRID=(1e-3 3e-3 1e-2 3e-2)
declare -A DYN_LR TTL_LR
for model in "${MODELS[@]}"; do
  ppl "$model-info-none" "$model" "$OUT/heldout/info"
  if [ "$model" = hope-icl ]; then
    DYN_LR[$model]=$(best dynamic lr "$OUT"/ppl/hope-info-dyn*.json)
    ppl "$model-info-dyn" "$model" "$OUT/heldout/info" --dynamic.lr "${DYN_LR[$model]}"
  else
    for lr in "${DYN_GRID[@]}"; do ppl "$model-info-dyn$lr" "$model" "$OUT/heldout/info" --dynamic.lr "$lr"; done
    DYN_LR[$model]=$(best dynamic lr "$OUT/ppl/$model"-info-dyn?e-?.json)
  fi
  if [[ $model == hope* ]]; then
    for lr in "${TTL_GRID[@]}"; do ppl "$model-info-ttl$lr" "$model" "$OUT/heldout/info" --ttl.inner_lr "$lr"; done
    TTL_LR[$model]=$(best ttl inner_lr "$OUT/ppl/$model"-info-ttl*.json)
  fi
  ppl "$model-changelogs-none" "$model" "$OUT/heldout/changelogs"
  ppl "$model-changelogs-dyn" "$model" "$OUT/heldout/changelogs" --dynamic.lr "${DYN_LR[$model]}"
  [[ $model == hope* ]] && ppl "$model-changelogs-ttl" "$model" "$OUT/heldout/changelogs" --ttl.inner_lr "${TTL_LR[$model]}"
  # (named capttl: the TTL_LR glob above must not pick it) Added with stage 5: HOPE's test-time learning with each in-context step capped at 3 % of the weights' norm
  # (cms_max_step 0.03) and lr 3e-2, the setting that stage 5's bench found best on changelogs.
  if [ "$model" = hope ]; then
    for domain in info changelogs; do
      ppl "$model-$domain-capttl" "$model" "$OUT/heldout/$domain" --ttl.inner_lr 3e-2 --ttl.max_step 0.03
    done
  fi
done

# 3. The four-domain sequence (hope eval retention, LocalDomains): info -> changelogs -> locales -> vim, about 2048
# training tokens and 512 test tokens per domain (documents hash-split into train and test, at most 2000
# characters from each), general perplexity on 1024 tokens of the default corpus's validation split. The finetuning
# methods take 2 epochs of batches of 4 x 128 tokens; the reading methods one pass. Dynamic evaluation and
# test-time learning use the step sizes tuned in stage 2; test-time learning consolidates after every domain, each
# CMS level's change capped at 5 % of its weights' norm.
# Two copies of this script may run at once (e.g. MODELS=titans-mac in a second shell): a retention run or the bench
# in progress holds a lock folder (<run>.lock) that the other copy skips; after a crash, remove the stale locks
# (rmdir runs/cl/retention/*/*.lock runs/cl/bench.lock).
read -r -a RET_MODELS <<< "${RET_MODELS:-transformer hope}"
SUITE=(--suite LocalDomains --suite.paths "[$CORPORA/info, $CORPORA/changelogs, $CORPORA/locales, $CORPORA/vim]"
  --suite.train_tokens 2048 --suite.test_tokens 512 --suite.max_file_chars 2000 --general_tokens 1024)
LOOP=(--method.loop.lr 1e-3 --method.loop.epochs 2 --method.loop.batch_size 4)
for model in "${RET_MODELS[@]}"; do
  dyn=$(best dynamic lr "$OUT/ppl/$model"-info-dyn?e-?.json)
  declare -A METHOD=(
    [finetune]='--method EpochFinetune --method.lr 1e-3 --method.epochs 2 --method.batch_size 4'
    [lora]="--method LoRA --method.rank 8 --method.alpha 16 ${LOOP[*]} --method.loop.lr 3e-3"
    [replay]="--method Replay --method.buffer_ratio 0.25 --method.general_ratio 0.25 --method.general_blocks 32 ${LOOP[*]}"
    [dynamic]="--method DynamicEvaluation --method.dynamic.lr $dyn"
  )
  if [[ $model == hope* ]]; then
    ttl=$(best ttl inner_lr "$OUT/ppl/$model"-info-ttl*.json)
    METHOD[ttl]="--method TestTimeLearning --method.ttl.inner_lr $ttl --method.ttl.consolidate true --method.ttl.max_change 0.05"
  fi
  for name in ttl dynamic finetune lora replay; do
    [ -n "${METHOD[$name]:-}" ] || continue
    run=$OUT/retention/$model/$name
    [ -f "$run/retention.json" ] && continue
    mkdir -p "$(dirname "$run")"
    mkdir "$run.lock" 2> /dev/null || continue  # another copy of this script runs it
    # shellcheck disable=SC2086  # METHOD holds several flags
    hope eval retention --checkpoint "$OUT/$model/checkpoints/last.ckpt" "${SUITE[@]}" ${METHOD[$name]} \
      --device cpu --progress false --out_dir "$run" > "$run.log" 2>&1 || { echo "failed: $run (see $run.log)"; exit 1; }
    rmdir "$run.lock"
    echo "retention: $run"
  done
  unset METHOD
done

# 4. In-context CMS learning in pretraining: its cost in training tokens/s (hope-debug with and without it, timed in
# turns, median of 2 rounds) and what a model pretrained with it gains from learning in context on held-out text
# (bench/ttl_gain.py: the CMS frozen, the model's own forward, and TestTimeLearner on the teach objective).
if [ "${BENCH:-1}" = 1 ] && mkdir "$OUT/bench.lock" 2> /dev/null; then
  [ -f "$DOC/results/throughput_icl_cpu.json" ] || python bench/throughput.py --presets hope-debug \
    hope-debug:cms_learn_in_context=true,cms_objective=reconstruction,cms_inner_lr=0.003 --seq_len 256 --batch_size 4 \
    --steps 2 --warmup 1 --rounds 2 --no_cpu_peak --device cpu --out "$DOC/results/throughput_icl_cpu.json"
  [ -f "$DOC/results/ttl_gain.json" ] || python bench/ttl_gain.py --checkpoints "$OUT/hope/checkpoints/last.ckpt" \
    "$OUT/hope-icl/checkpoints/last.ckpt" --sources "$OUT/heldout/changelogs" --tokens 1024 --modes frozen forward ttl-teach \
    --out "$DOC/results/ttl_gain.json"
  rmdir "$OUT/bench.lock"
fi

# 5. Added after the tables above: HOPE's test-time learning with each in-context step capped (--method.ttl.max_step,
# i.e. cms_max_step), sweeping the consolidation cap and the passes, on the same sequence. Reports are copied to
# $DOC/results/retention-cap/ (the README's "step cap" tables).
DEFAULT_SWEEP="lr1e-2-nostep-nochange lr3e-2-step3e-2-change5e-2 lr3e-2-step3e-2-change2e-1"
DEFAULT_SWEEP+=" lr3e-2-step3e-2-change2e-1-passes3 lr3e-2-step3e-2-nochange"
read -r -a SWEEP <<< "${SWEEP:-$DEFAULT_SWEEP}"  # one line: read stops at the first newline
declare -A CAPPED=(
  [lr1e-2-nostep-nochange]='--method.ttl.inner_lr 0.01'
  [lr3e-2-step3e-2-change5e-2]='--method.ttl.inner_lr 0.03 --method.ttl.max_step 0.03 --method.ttl.max_change 0.05'
  [lr3e-2-step3e-2-change2e-1]='--method.ttl.inner_lr 0.03 --method.ttl.max_step 0.03 --method.ttl.max_change 0.2'
  [lr3e-2-step3e-2-change2e-1-passes3]='--method.ttl.inner_lr 0.03 --method.ttl.max_step 0.03 --method.ttl.max_change 0.2 --method.passes 3'
  [lr3e-2-step3e-2-nochange]='--method.ttl.inner_lr 0.03 --method.ttl.max_step 0.03'
)
for name in "${SWEEP[@]}"; do
  run=$OUT/retention-cap/$name
  [ -f "$run/retention.json" ] || { mkdir -p "$OUT/retention-cap"
    # shellcheck disable=SC2086  # CAPPED holds several flags
    hope eval retention --checkpoint "$OUT/hope/checkpoints/last.ckpt" "${SUITE[@]}" --method TestTimeLearning \
      --method.ttl.consolidate true ${CAPPED[$name]} --device cpu --progress false --out_dir "$run" > "$run.log" 2>&1 \
      || { echo "failed: $run (see $run.log)"; exit 1; }; }
  mkdir -p "$DOC/results/retention-cap"
  cp "$run/retention.json" "$DOC/results/retention-cap/$name.json"
done

# 6. The tables and the plot.
python "$DOC/tables.py" "$OUT" "$DOC/results"
