# shellcheck shell=bash
# What every job script does around its launch, in one place: signals from its first line, the files through
# which it and the ranks talk, the launch and its exit status, and continuing a run the time limit stopped.
#
#   source launch/jobs.sh && job_begin slurm|pbs   # first thing: the job's id, its files, the signal traps,
#                                                 # the settings every job has (below)
#   train_job SYSTEM                              # a training job: the pre-flight check, then the training
#   scaling_job SYSTEM ALLOCATED                  # a scaling sweep on 1, 2, 4, ... ALLOCATED nodes
# and the steps they are made of:
#   preflight CMD...                              # the doctor through the job's launch line (DOCTOR=0 skips)
#   job_launch CMD...                             # the training; continues the run after a time-limit stop
#   job_run CMD...                                # any other step
#
# The settings every job has, from the submission (sbatch --export, qsub -v) or the job script, else these
# defaults: OVERRIDES (extra section.key=value words, none), PYTHON (python), RUN_NAME (the run directory's
# name; none: the job id names it, and a requeue or a continuation keeps it), MAX_REQUEUES (Slurm: how often a
# job requeues itself, 10), MAX_RESUBMITS (PBS: how many jobs may carry one run, 10), DOCTOR (0 skips the
# pre-flight check), HPC_MNIST_JOB_FILES (the folder of the status and stop files, runs/.jobs), MAX_FRUITLESS
# (the launches in a row that may end without a new checkpoint before the run is no longer continued, 3; 0:
# no limit), SPARE_NODES (nodes of the job held as spares, 0: train on all), MAX_RESTARTS (relaunches inside
# the job after a failed rank or host, 3; 0: none, the job requeues as before). The job script sets CONFIG (the
# run's YAML) and RANKS_PER_NODE.
#
# Bad hosts. A host whose ranks were lost is recorded in the run directory's bad-hosts.json after the launch
# (hpc_mnist/runtime/badhosts.py); a requeue excludes it (Slurm: requeuehold, ExcNodeList, release), a PBS
# successor is placed on other hosts, and a launch whose hosts less the bad ones are too few for the job does
# not start (one line, exit 2). `hpc-mnist hosts RUN_DIR --clear` clears the list.
#
# Signals. The scheduler itself delivers TERM to every process of the job (scancel, qdel, a time limit, a
# requeue, preemption): this shell forwards nothing, waits for the ranks' stop checkpoint, starts nothing
# new, and reports. USR1 and USR2 never end the job: on Slurm USR1 is the time-limit warning
# (--signal=B:USR1@N, to this shell only, and at any moment of a short job's start-up). The steps start with
# USR1 and USR2 ignored, so a signal during their start-up (importing torch, loading data) is no death; the
# trainer then takes USR1 as a stop request (checkpoint, exit 75). On PBS `qsig -s USR1` reaches the job's
# top processes, and PBS's own login shell above this script, which no job script can reach, dies of it:
# PBS then kills the job at once (Exit_status 266, measured on the lab); qdel is the clean stop there.
#
# The trainer writes why it ended to $HPC_MNIST_STATUS_FILE (its format and rules: hpc_mnist/runtime/status.py,
# which this file reads and keeps only through `python -m hpc_mnist.job`, hpc_mnist/job.py):
#   {"state": ..., "reason": "deadline" | "signal" | ..., "requeue": true | false, "run_dir": ..., ...}
# and the job continues the run only when requeue is true (a stop for the time limit; ranks or a host lost
# after this job had saved a checkpoint): Slurm requeues the job (same id, same run directory); PBS, where
# users cannot requeue, submits a successor that runs after this job has ended. A user's scancel or qdel
# (TERM, requeue false), or `hpc-mnist stop` (a user's request in the stop file: reason "user stop", requeue
# false), ends the job with its checkpoint kept, for a later submission with the same RUN_NAME to resume.

# job_begin slurm|pbs: sets JOB_ID (a Slurm array task is <array>_<task>), the status and stop files, the
# traps and the settings' defaults (above); outside a batch job of that scheduler, one line and exit 2.
job_begin() {
    local files=${HPC_MNIST_JOB_FILES:-runs/.jobs}
    JOB_SCHEDULER=$1 JOB_STOPPING=""
    case $JOB_SCHEDULER in
        slurm) JOB_ID=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}
               JOB_ID=${JOB_ID:-${SLURM_JOB_ID:-}} JOB_LINK=${SLURM_RESTART_COUNT:-0} ;;
        pbs) JOB_ID=${PBS_JOBID:-} JOB_LINK=${RESUBMIT_COUNT:-0} ;;
    esac
    if [ -z "$JOB_ID" ]; then
        local submit=sbatch variable=SLURM_JOB_ID
        [ "$JOB_SCHEDULER" = pbs ] && submit=qsub variable=PBS_JOBID
        echo "hpc_mnist: ${0##*/} runs inside a ${JOB_SCHEDULER^^} job: submit it with $submit ($variable is not set" \
            "here)" >&2
        exit 2
    fi
    trap 'JOB_STOPPING=TERM' TERM
    trap job_usr1 USR1
    trap 'echo "hpc_mnist: SIGUSR2 ignored"' USR2
    case $files in /*) ;; *) files=$PWD/$files ;; esac   # the ranks may start elsewhere
    mkdir -p "$files"
    export HPC_MNIST_STATUS_FILE=$files/$JOB_ID.status.json HPC_MNIST_STOP_FILE=$files/$JOB_ID.stop
    rm -f "$HPC_MNIST_STATUS_FILE" "$HPC_MNIST_STOP_FILE"
    OVERRIDES=${OVERRIDES:-} PYTHON=${PYTHON:-python} RUN_NAME=${RUN_NAME:-}
}

# train_job SYSTEM: a training job once its settings are made and its site file (launch/SYSTEM.sh) sourced: the
# pre-flight check, then the training with CONFIG, RUN_NAME and OVERRIDES, both through
# `hpc_mnist.launch --system SYSTEM --ppn $RANKS_PER_NODE`. Returns the launch's exit status (the job's).
#
# Healing inside the job. With SPARE_NODES=K the job holds K nodes more than it trains on: the pre-flight check
# runs on every good host, a host it blames alone is recorded bad and left out (one line), and the training runs
# on the first good hosts, pinned (srun --nodelist, mpiexec's host file). A launch that ends because a rank or
# its host failed (lost, quiet, gone) after progress is relaunched in this job at once, without the hosts named
# bad, while the good hosts still make the launch, up to MAX_RESTARTS times (3); else the job requeues or
# submits its successor as before.
train_job() {
    local launch=("$PYTHON" -m hpc_mnist.launch --system "$1" --ppn "$RANKS_PER_NODE") status
    # shellcheck disable=SC2206  # OVERRIDES is a list of words on purpose
    local settings=(--config "$CONFIG" ${RUN_NAME:+log.name=$RUN_NAME} $OVERRIDES)   # the doctor checks its storage
    local report=${HPC_MNIST_STATUS_FILE%.status.json}.doctor.json
    JOB_RESTARTS=0
    pick_hosts "${settings[@]}" || return $?
    while :; do
        status=0
        rm -f "$report"   # a report of an earlier check must not blame hosts for this one
        preflight "${launch[@]}" ${JOB_GOOD_HOSTS:+--hosts "$JOB_GOOD_HOSTS"} -- "$PYTHON" -m hpc_mnist.doctor \
            --json "$report" "${settings[@]}" || status=$?
        [ "$status" -eq 0 ] && break
        if [ "$status" -eq 1 ] && "$PYTHON" -m hpc_mnist.job after-doctor --report "$report" --job "$JOB_ID" \
                -- "${settings[@]}"; then
            pick_hosts "${settings[@]}" || return $?   # without the hosts it blamed, or one line why not
            continue
        fi
        preflight_failed "$status"
        return "$status"
    done
    while :; do
        status=0
        job_launch "${launch[@]}" ${JOB_TRAIN_HOSTS:+--hosts "$JOB_TRAIN_HOSTS"} -- "$PYTHON" -m hpc_mnist.train \
            "${settings[@]}" || status=$?
        [ "${JOB_NEXT:-}" = here ] || return "$status"
        JOB_RESTARTS=$((JOB_RESTARTS + 1))
        pick_hosts "${settings[@]}" || return "$status"
        # Slurm counts the failed step as running until every host has reported its end, which a host cut off
        # never does (measured on the lab: the relaunch's srun waited "Requested nodes are busy" for minutes);
        # its ranks have ended, so the relaunch may share their CPUs.
        export SLURM_OVERLAP=1
        echo "hpc_mnist: $(stopped_why) with a checkpoint; relaunching inside job $JOB_ID" \
            "${JOB_TRAIN_HOSTS:+on $JOB_TRAIN_HOSTS }(restart $JOB_RESTARTS of MAX_RESTARTS=${MAX_RESTARTS:-3})" >&2
    done
}

# pick_hosts SETTINGS...: the run's chain and hosts before a launch (python -m hpc_mnist.job before-launch): sets
# JOB_TRAIN_HOSTS (the hosts to train on) and JOB_GOOD_HOSTS (every good host: the pre-flight check's), both
# empty where the launch may use every host of the job; too few good hosts, or a chain without progress: its
# one line, exit 2.
pick_hosts() {
    local hosts
    hosts=$("$PYTHON" -m hpc_mnist.job before-launch --scheduler "$JOB_SCHEDULER" --job "$JOB_ID" \
        --link "${JOB_LINK:-0}" --max-fruitless "${MAX_FRUITLESS:-3}" --spares "${SPARE_NODES:-0}" -- "$@") \
        || return $?
    read -r JOB_TRAIN_HOSTS JOB_GOOD_HOSTS <<< "$hosts" || :
}

# scaling_job SYSTEM ALLOCATED: a scaling sweep (hpc_mnist.scaling run) of CONFIG and OVERRIDES with
# RANKS_PER_NODE ranks per node, into SWEEP_DIR, with the sweep's settings, each from the submission or the job
# script, else its default: NODES (the node counts: 1, 2, 4, ... below ALLOCATED, the allocation's node count,
# and ALLOCATED), MODE (weak: BATCH per rank; strong: BATCH global; weak), BATCH (128), EPOCHS (2), REPEATS (1),
# PREDICT (1: then time the all-reduce at the two smallest points of more than one rank; the report puts the model's
# prediction and its error beside each point). Returns the sweep's exit status.
scaling_job() {
    local system=$1 allocated=$2 n options=()
    if [ -z "${NODES:-}" ]; then
        NODES=1
        for ((n = 2; n < allocated; n *= 2)); do NODES="$NODES,$n"; done
        if [ "$allocated" -gt 1 ]; then NODES="$NODES,$allocated"; fi
    fi
    MODE=${MODE:-weak} BATCH=${BATCH:-128} EPOCHS=${EPOCHS:-2} REPEATS=${REPEATS:-1} PREDICT=${PREDICT:-1}
    if [ "$PREDICT" = 1 ]; then options=(--predict); fi
    # shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
    job_run "$PYTHON" -m hpc_mnist.scaling run --system "$system" --nodes "$NODES" --ppn "$RANKS_PER_NODE" \
        --mode "$MODE" --batch "$BATCH" --epochs "$EPOCHS" --repeats "$REPEATS" --sweep-dir "$SWEEP_DIR" \
        "${options[@]}" -- --config "$CONFIG" $OVERRIDES
}

# job_run CMD...: run a step with USR1/USR2 ignored until it installs handlers of its own; wait for it through
# any trapped signal (after a TERM: for the ranks' checkpoint); return its exit status. After a TERM nothing
# new starts.
job_run() {
    local pid code=0 tee_pid="" kept
    if [ -n "$JOB_STOPPING" ]; then
        echo "hpc_mnist: got SIG$JOB_STOPPING before '${*:1:3} ...' started: not starting it" >&2
        return 143
    fi
    if [ -z "${JOB_WATCHED:-}" ]; then
        (trap '' USR1 USR2; exec "$@") &
        pid=$!
    else
        touch "$HPC_MNIST_STATUS_FILE.launched"   # launch_watch: what is newer
        # The launch's output, kept as it reaches the log: MPICH's mpiexec kills every rank when one dies, and
        # only its report (on its standard output) says on which host; after-launch reads it. tee outlives the
        # job's signals.
        kept=$HPC_MNIST_STATUS_FILE.launch-output
        exec {JOB_OUT_FD}> >(trap '' INT TERM HUP USR1 USR2; exec tee "$kept")
        tee_pid=$!
        (trap '' USR1 USR2; exec "$@" >&"$JOB_OUT_FD") &
        pid=$!
        exec {JOB_OUT_FD}>&-
        launch_watch "$pid"
    fi
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null || :; done   # a trapped signal ends a wait
    wait "$pid" 2>/dev/null || code=$?   # the step's own exit status
    # tee has read the last of it once every writer has gone (a rank left behind may hold it: 2 s at most)
    if [ -n "$tee_pid" ]; then
        for _ in $(seq 20); do kill -0 "$tee_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    return "$code"
}

# launch_watch PID: while a training launch runs, end its launcher once the ranks have recorded a fault that names
# its hosts (status failed, bad_hosts) LAUNCH_GRACE (5) seconds ago and it still waits: srun waits for the tasks
# of a host cut off from the network until Slurm declares that host down (SlurmdTimeout: 30 s on the lab, often
# 300 s on a cluster; measured on the lab: the relaunch's first step 49 s after the fault), and the ranks that
# can still run have ended by then. The relaunch may share the old step's CPUs (SLURM_OVERLAP, train_job).
launch_watch() {
    local pid=$1 since="" started=${HPC_MNIST_STATUS_FILE}.launched grace=${LAUNCH_GRACE:-5}
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$since" ] && [ "$HPC_MNIST_STATUS_FILE" -nt "$started" ] \
                && grep -q '"state": "failed"' "$HPC_MNIST_STATUS_FILE" 2>/dev/null \
                && grep -Eq '"bad_hosts": \[ *("|$)' "$HPC_MNIST_STATUS_FILE" 2>/dev/null; then
            since=$SECONDS
        fi
        if [ -n "$since" ] && (( SECONDS - since >= grace )); then
            echo "hpc_mnist: the ranks recorded why they ended ${grace} s ago, and the launcher still waits (for a" \
                "host that does not answer): ending it" >&2
            kill -KILL "$pid" 2>/dev/null || :
            return 0
        fi
        sleep 0.5
    done
}

# Pre-flight: python -m hpc_mnist.doctor through the job's own launch line, before any training (where every
# rank runs, GPUs, CPU binding, network, one timed all-reduce, the run directory's storage; a missing rank is
# named within its timeout).
# A failed check ends the job with the doctor's verdicts instead of a training run that hangs or crawls
# (preflight_failed says so), unless it blames hosts the job can do without (train_job). DOCTOR=0 skips it.
preflight() {
    [ "${DOCTOR:-1}" = 0 ] && return 0
    job_run "$@"
}

preflight_failed() {
    if [ "$1" -eq 1 ]; then
        echo "hpc_mnist: the pre-flight check failed (verdicts above): not training; DOCTOR=0 skips the check" >&2
    else
        echo "hpc_mnist: the pre-flight check could not run (exit $1, see above): not training" >&2
    fi
}

# job_launch CMD...: the training launch; afterwards continue the run when the status says so (requeue true:
# stopped for the time limit, or ranks lost after progress). Returns the launch's exit status, which the job
# script exits with (a batch script whose last command succeeds is COMPLETED even when its launch failed).
#
# After the launch, `hpc_mnist.job after-launch` reads the status the ranks left. One still `running` means they
# were killed before they could record why (the OOM killer, a node that died, a launcher that killed the rest,
# as MPICH's mpiexec does): it says so in one line and marks both copies of the status failed, reason gone,
# with requeue true when this job's ranks had saved a checkpoint (a running status names the newest one only
# then), as the trainer decides after a lost rank, and the job was not being stopped (a scancel or qdel ends
# the job whatever its ranks managed to write). It exits 0 when the status asks for the run to continue,
# printing why it stopped and the run's name (JOB_WHY, JOB_RUN for continue_*_job) and where it continues
# (JOB_NEXT: `here`, a relaunch inside this job, train_job's; `queue`); 1 when not; 2 with one line when the
# status file cannot be read. No status file: the ranks recorded nothing, nothing to continue.
job_launch() {
    local status=0 said
    JOB_NEXT=""
    JOB_WATCHED=1 job_run "$@" || status=$?
    if [ -e "$HPC_MNIST_STATUS_FILE" ] && said=$("${PYTHON:-python}" -m hpc_mnist.job after-launch \
            --scheduler "$JOB_SCHEDULER" --exit "$status" --stopping "${JOB_STOPPING:-}" \
            --status "$HPC_MNIST_STATUS_FILE" --job "$JOB_ID" --link "${JOB_LINK:-0}" \
            --max-fruitless "${MAX_FRUITLESS:-3}" --spares "${SPARE_NODES:-0}" \
            --launch-output "$HPC_MNIST_STATUS_FILE.launch-output" \
            --restarts-left $(( ${MAX_RESTARTS:-3} - ${JOB_RESTARTS:-0} ))); then
        # $() drops an empty last line
        { IFS= read -r JOB_WHY || :; IFS= read -r JOB_RUN || :; IFS= read -r JOB_NEXT || :; } <<< "$said"
        [ "$JOB_NEXT" = here ] || "continue_${JOB_SCHEDULER}_job"
    fi
    return "$status"
}

job_usr1() {
    if [ "$JOB_SCHEDULER" = pbs ]; then
        echo "hpc_mnist: SIGUSR1 (qsig) ignored by the job script (qdel stops a run with a checkpoint)"
        return 0   # a bare return in a trap returns the interrupted command's status, which set -e then obeys
    fi
    # --signal=B:USR1@N. Where squeue answers, the trainer knows the job's end time already and stops in time
    # by itself; a stop now would end a run that still fits (the warning can come at the start).
    local end
    end=$(timeout 10 squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) || end=""
    case $end in
        [0-9]*T*) echo "hpc_mnist: time-limit warning; the trainer stops before the job's end ($end) by itself" ;;
        *) echo "hpc_mnist: time-limit warning; asking the ranks to stop with a checkpoint"
           touch "$HPC_MNIST_STOP_FILE" ;;
    esac
}

continue_slurm_job() {
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-10}" ]; then
        echo "hpc_mnist: $(stopped_why) with a checkpoint; not requeueing job $JOB_ID again" \
            "(requeued ${SLURM_RESTART_COUNT:-0} times, MAX_REQUEUES=${MAX_REQUEUES:-10}): resubmit with the same RUN_NAME"
    elif ! command -v scontrol >/dev/null 2>&1; then
        echo "hpc_mnist: $(stopped_why) with a checkpoint, but scontrol is not available here to" \
            "requeue job $JOB_ID: resubmit with the same RUN_NAME to continue"
    elif "${PYTHON:-python}" -m hpc_mnist.job requeue-slurm --job "$JOB_ID" --status "$HPC_MNIST_STATUS_FILE"; then
        echo "hpc_mnist: $(stopped_why) with a checkpoint; requeueing job $JOB_ID to continue"
    fi
}

# stopped_why: why the run stopped with requeue true, as hpc_mnist.job said after the launch: the time limit,
# or a rank (or its host) lost after this job's segment had saved a checkpoint (the trainer, or the rule for a
# status left running, sets requeue only then, so that a rank that dies again at the same place, out of memory
# say, does not requeue the job over and over).
stopped_why() {
    echo "${JOB_WHY:-}"
}

# PBS: submit the same script (PBS's copy of it, $0), variables and resources as a job that starts after this
# one has ended, on the same run directory (hpc_mnist/runtime/pbs.py builds the qsub line from qstat).
# RESUBMIT_COUNT counts the jobs that carried the run; MAX_RESUBMITS (10) bounds it.
continue_pbs_job() {
    local count=${RESUBMIT_COUNT:-0} run=${JOB_RUN:-} new
    if [ "$count" -ge "${MAX_RESUBMITS:-10}" ]; then
        echo "hpc_mnist: $(stopped_why) with a checkpoint; not continuing run $run again ($count jobs" \
            "submitted, MAX_RESUBMITS=${MAX_RESUBMITS:-10}): resubmit with RUN_NAME=$run"
    elif new=$("${PYTHON:-python}" -m hpc_mnist.job continue-pbs --script "$0" --run-name "$run" \
            --count $((count + 1))); then
        echo "hpc_mnist: $(stopped_why) with a checkpoint; job $new continues run $run after job $JOB_ID ends"
    else
        echo "hpc_mnist: $(stopped_why) with a checkpoint, but the job to continue it could not be" \
            "submitted (above): resubmit with RUN_NAME=$run"
    fi
}
