# shellcheck shell=bash
# Helpers the job scripts share, so the signal and walltime logic lives in one place.

# Seconds the trainer may use in this PBS job: the walltime (from qstat) less 60 s, or nothing when
# qstat is unavailable. PBS sends SIGTERM at the walltime and no earlier warning, so the trainer uses
# this as train.time_limit to stop with a checkpoint before an epoch that would not fit.
pbs_time_limit() {
    local walltime hours minutes seconds
    command -v qstat >/dev/null 2>&1 || return 0
    walltime=$(qstat -f "$PBS_JOBID" 2>/dev/null | sed -n 's/^ *Resource_List.walltime = //p')
    [ -n "$walltime" ] || return 0
    IFS=: read -r hours minutes seconds <<< "$walltime"
    echo $(( 10#$hours * 3600 + 10#$minutes * 60 + 10#$seconds - 60 ))
}

# Run a command under Slurm so that the early-warning signal reaches it, then requeue on a stop.
# A bash trap runs only once the foreground command returns, so the command runs in the background
# while this shell waits and forwards USR1/TERM (the launcher becomes srun, which passes them to the
# ranks). Exit code 75 means "stopped with a checkpoint": requeue the job (same id, same run
# directory) up to MAX_REQUEUES times, and the next start resumes.
run_forwarding_signals() {
    local pid status=0
    "$@" &
    pid=$!
    # shellcheck disable=SC2064  # expand $pid now
    trap "kill -USR1 $pid 2>/dev/null || true" USR1
    # shellcheck disable=SC2064
    trap "kill -TERM $pid 2>/dev/null || true" TERM
    while :; do
        wait "$pid" && status=0 || status=$?
        kill -0 "$pid" 2>/dev/null || break   # still running: wait was interrupted by a signal
    done
    if [ "$status" -eq 75 ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "${MAX_REQUEUES:-10}" ]; then
        echo "hpc_mnist: stopped early with a checkpoint; requeueing job $SLURM_JOB_ID to continue"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$status"
}
