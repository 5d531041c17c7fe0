# shellcheck shell=bash
# Helpers the job scripts share, so the signal and walltime logic lives in one place.

# Seconds the trainer may use in this PBS job: the walltime (from qstat) less 60 s, or nothing when
# qstat is unavailable. PBS sends SIGTERM at the walltime and no earlier warning. The trainer also reads
# the job's start time and walltime from qstat itself (train.job_deadline) and stops at the earlier of
# the two; this limit is the fallback where only the batch shell can run qstat.
pbs_time_limit() {
    local walltime hours minutes seconds
    command -v qstat >/dev/null 2>&1 || return 0
    walltime=$(qstat -f "$PBS_JOBID" 2>/dev/null | sed -n 's/^ *Resource_List.walltime = //p')
    [ -n "$walltime" ] || return 0
    IFS=: read -r hours minutes seconds <<< "$walltime"
    echo $(( 10#$hours * 3600 + 10#$minutes * 60 + 10#$seconds - 60 ))
}

# Pre-flight: python -m hpc_mnist.doctor through the job's own launch line, before any training (where every
# rank runs, GPUs, CPU binding, network, one timed all-reduce; a missing rank is named within its timeout).
# A failed check ends the job with the doctor's verdicts instead of a training run that hangs or crawls.
# DOCTOR=0 skips it.
preflight() {
    local status=0
    [ "${DOCTOR:-1}" = 0 ] && return 0
    "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "hpc_mnist: the pre-flight check failed (verdicts above): not training; DOCTOR=0 skips the check" >&2
    fi
    return "$status"
}

# Run a Slurm batch job's launch (srun, or python -m hpc_mnist.launch) and requeue the job only when the
# trainer stopped for the time limit; return the launch's exit status, which the job script exits with
# (a batch script whose last command succeeds is COMPLETED even when its srun failed).
#
# This shell forwards no signal. Slurm delivers TERM to every task itself at a scancel, a time limit or a
# requeue, so a forwarded copy only races the ranks' checkpoint; and the early warning
# (--signal=B:USR1@N, sent to this shell only, up to 60 s earlier than asked and so at once in a short
# job) would kill ranks still importing torch and torchrun agents, which do not handle USR1. The trainer
# reads the job's end time from squeue when it starts; the warning only matters where it cannot, and there
# it becomes the stop file every rank checks. The trainer writes why it ended to the status file:
#   {"state": ..., "reason": "deadline" | "signal" | ..., "requeue": true | false, ...}
# so a user's scancel (TERM, requeue false) ends the job with its checkpoint kept, for a later submission
# with the same RUN_NAME to resume, while a deadline stop requeues the job (same id, same run directory).
run_slurm_job() {
    local files=${HPC_MNIST_JOB_FILES:-runs/.jobs} job pid status=0
    job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    job=${job:-${SLURM_JOB_ID:?run_slurm_job runs inside a Slurm job}}
    case $files in /*) ;; *) files=$PWD/$files ;; esac   # the ranks may start elsewhere
    mkdir -p "$files"
    export HPC_MNIST_STATUS_FILE=$files/$job.status.json HPC_MNIST_STOP_FILE=$files/$job.stop
    rm -f "$HPC_MNIST_STATUS_FILE" "$HPC_MNIST_STOP_FILE"
    trap slurm_warning USR1
    trap : TERM   # the ranks got TERM from Slurm too: wait for their checkpoint, then report
    "$@" &
    pid=$!
    while :; do
        wait "$pid" && status=0 || status=$?
        kill -0 "$pid" 2>/dev/null || break   # still running: a trapped signal interrupted wait
    done
    trap - USR1 TERM
    if grep -qs '"requeue": *true' "$HPC_MNIST_STATUS_FILE"; then
        requeue_slurm_job "$job"
    fi
    return "$status"
}

# USR1 from --signal=B:USR1@N. Where squeue answers, the trainer knows the job's end time already and
# stops in time by itself; a stop now would end a run that still fits (the warning can come at the start).
slurm_warning() {
    local end
    end=$(timeout 10 squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) || end=""
    case $end in
        [0-9]*T*) echo "hpc_mnist: time-limit warning; the trainer stops before the job's end ($end) by itself" ;;
        *) echo "hpc_mnist: time-limit warning; asking the ranks to stop with a checkpoint"
           touch "$HPC_MNIST_STOP_FILE" ;;
    esac
}

requeue_slurm_job() {
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-10}" ]; then
        echo "hpc_mnist: stopped for the time limit with a checkpoint; not requeueing job $1 again" \
            "(requeued ${SLURM_RESTART_COUNT:-0} times, MAX_REQUEUES=${MAX_REQUEUES:-10}): resubmit with the same RUN_NAME"
    elif ! command -v scontrol >/dev/null 2>&1; then
        echo "hpc_mnist: stopped for the time limit with a checkpoint, but scontrol is not available here to" \
            "requeue job $1: resubmit with the same RUN_NAME to continue"
    else
        echo "hpc_mnist: stopped for the time limit with a checkpoint; requeueing job $1 to continue"
        scontrol requeue "$1"
    fi
}
