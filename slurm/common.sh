# shellcheck shell=bash
# Shared by the slurm/*.sbatch scripts (sourced, not executed).
set -euo pipefail

# One line per fact a post-mortem needs; the log is appended across requeues, so the restart count matters.
hope_banner() {
    echo  # a requeued run appends after a progress bar that may not have ended its line
    echo "=== $(date -Is) job=${SLURM_JOB_ID:-?} name=${SLURM_JOB_NAME:-?}" \
        "array=${SLURM_ARRAY_JOB_ID:-}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}" \
        "SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0} nodes=${SLURM_NNODES:-?} (${SLURM_JOB_NODELIST:-?})" \
        "ntasks_per_node=${SLURM_NTASKS_PER_NODE:-?} host=$(hostname -s)"
    echo "=== cwd=$PWD commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)"
}

# Lightning's SLURMEnvironment only accepts jobs that give --ntasks-per-node (= trainer.devices).
hope_require_tasks_per_node() {
    if [[ -z ${SLURM_NTASKS_PER_NODE:-} ]]; then
        echo "error: submit with --ntasks-per-node=<devices per node> (a bare --ntasks is rejected by Lightning)" >&2
        exit 2
    fi
}

# srun no longer inherits --cpus-per-task from the allocation (Slurm >= 22.05), and torch would otherwise start
# one thread per core in every task; both follow --cpus-per-task when the job gave one.
hope_cpu_env() {
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
        export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
    fi
    export PYTHONUNBUFFERED=1  # log lines reach the Slurm output file when they happen
}

# Newest modification time of a checkpoint: a file, a symlink (last.ckpt may link) or a DeepSpeed directory.
hope_ckpt_mtime() {
    find -L "$1" -type f -printf '%T@\n' 2>/dev/null | sort -n | tail -n1
}

# Print the checkpoint to resume from, or nothing. Candidates under RUN_DIR:
#   hpc_ckpt_N.ckpt  written on SIGUSR1 (hope.lit.requeue.SignalCheckpoint) just before it requeues the job;
#   last*.ckpt       written by ModelCheckpoint(save_last=...) during training, and on SIGTERM.
# The newest wins: after a signal-driven requeue that is the hpc checkpoint (Lightning alone would also pick it
# with ckpt_path=None, but `--ckpt_path last` would not: it only sees ModelCheckpoint files); after a node
# failure, a crash or a manual resubmit into the same RUN_DIR it is last.ckpt, which Lightning's hpc lookup
# ignores. Passing the path explicitly covers every case and puts the choice in the log.
hope_find_resume() {
    local run_dir=$1 best="" best_t=0 t c
    [[ -d $run_dir ]] || return 0
    while IFS= read -r -d '' c; do
        t=$(hope_ckpt_mtime "$c")
        [[ -n $t ]] || continue
        if awk -v a="$t" -v b="$best_t" 'BEGIN { exit !(a > b) }'; then
            best=$c
            best_t=$t
        fi
    done < <(find "$run_dir" -maxdepth 6 \( -name 'hpc_ckpt_*.ckpt' -o -name 'last.ckpt' -o -name 'last-v*.ckpt' \) \
        -print0 2>/dev/null)
    echo "$best"
}

# Sets the array RESUME_ARGS to (--ckpt_path <newest>) unless the user passed --ckpt_path or RESUME=never.
hope_resume_args() {
    local run_dir=$1 ckpt
    shift
    RESUME_ARGS=()
    if [[ ${RESUME:-auto} == never ]]; then
        echo "=== resume: disabled (RESUME=never)"
        return 0
    fi
    local a
    for a in "$@"; do
        if [[ $a == --ckpt_path || $a == --ckpt_path=* ]]; then
            echo "=== resume: --ckpt_path given on the command line, not searching $run_dir"
            return 0
        fi
    done
    ckpt=$(hope_find_resume "$run_dir")
    if [[ -n $ckpt ]]; then
        echo "=== resume: $ckpt"
        RESUME_ARGS=(--ckpt_path "$ckpt")
    else
        echo "=== resume: nothing in $run_dir, starting fresh"
    fi
}

# CONFIG may list several files (space separated); each becomes a --config, later ones override earlier ones.
hope_config_args() {
    local c
    CONFIG_ARGS=()
    # shellcheck disable=SC2086  # word splitting is the point: one --config per listed file
    for c in $1; do
        [[ -f $c ]] || { echo "error: config $c not found (cwd $PWD)" >&2; exit 2; }
        CONFIG_ARGS+=(--config "$c")
    done
}

# Run a Lightning trainer subcommand (`hope fit`, `hope finetune`) on every task of the allocation:
#   hope_run_trainer SUBCOMMAND RUN_DIR [extra args...]
# num_nodes/devices come from the allocation (Lightning's SLURMEnvironment checks that they match it); extra
# args come last so they override the configs and everything else here.
hope_run_trainer() {
    local subcmd=$1 run_dir=$2
    shift 2
    : "${CONFIG:?set CONFIG=path/to/config.yaml (e.g. sbatch --export=ALL,CONFIG=...)}"
    local -a hope_cmd
    read -ra hope_cmd <<<"${HOPE:-hope}"
    hope_banner
    hope_require_tasks_per_node
    hope_cpu_env
    hope_config_args "$CONFIG"
    hope_resume_args "$run_dir" "$@"
    mkdir -p "$run_dir"
    set -x
    srun --kill-on-bad-exit=1 "${hope_cmd[@]}" "$subcmd" "${CONFIG_ARGS[@]}" \
        --trainer.num_nodes "$SLURM_NNODES" \
        --trainer.devices "$SLURM_NTASKS_PER_NODE" \
        --trainer.default_root_dir "$run_dir" \
        "${RESUME_ARGS[@]}" "$@"
}
