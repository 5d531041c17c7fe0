#!/bin/bash
# A small real OpenPBS cluster on this one Linux machine, beside the Slurm lab (lab.sh):
#   tests/cluster/pbs_lab.sh build    build OpenPBS into /opt/pbs unless it is there (apt deps, ~5 min, once)
#   tests/cluster/pbs_lab.sh up       build when needed; hosts, bridge, server + sched + comm, one mom per host
#   tests/cluster/pbs_lab.sh down     stop what `up` started (by PID) and remove hosts, bridge, /etc/netns files
#   tests/cluster/pbs_lab.sh status   what is running
# then:  tests/cluster/onpbs hp-head qsub -l select=2:ncpus=2 -j oe -o /tmp/hp-lab/shared/job.out job.sh
# Hosts are network namespaces hp-n1..hp-nN (10.77.0.1..N; one pbs_mom each, 2 ncpus) and hp-head
# (10.77.0.100: pbs_server with its PostgreSQL datastore, pbs_sched, pbs_comm), on bridge hp-br0
# (10.77.0.254). They share the machine's whole file system (the repository, the venv, /tmp): only the
# network, the hostname and /etc/{hosts,pbs.conf,nsswitch.conf,resolv.conf} are their own (tests/cluster/onpbs).
# PBS_HOME /var/spool/pbs-<host>, PBS_TMPDIR /var/tmp/pbs-<host>, logs under HP_LAB_DIR (/tmp/hp-lab).
# Environment: HP_LAB_DIR (/tmp/hp-lab), HP_LAB_NODES (3; 1 to 6), HP_LAB_LINK (each host's link speed both ways,
# a tc rate such as 200mbit, shaped with tbf; empty: unshaped), HP_LAB_PBS_SRC (the OpenPBS source tarball;
# <repo>/../shared/pbs-lab/openpbs-src.tar.gz), HP_LAB_KILL_DELAY (10 s: SIGKILL that long after SIGTERM,
# PBS's default), HP_LAB_SCHED_ITERATION (2 s), HP_LAB_NODE_FAIL_REQUEUE (10 s: how long the server waits, once
# it has lost a job's first host, before it reruns the job; PBS's default is 310 s), HP_LAB_USER (hpuser: an
# ordinary account up creates for jobs).
# Root may submit too (acl_roots=root), but pbs_mom does not see root-owned processes: a root job's processes
# are signalled only as the top shell's process group, and the job ends as soon as that group is gone.
# Exit status 3: the machine does not permit a lab (not root, no network namespaces, packages not
# installable, no OpenPBS source); 1: anything else failed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB_DIR=${HP_LAB_DIR:-/tmp/hp-lab}
PBS_SRC=${HP_LAB_PBS_SRC:-$REPO/../shared/pbs-lab/openpbs-src.tar.gz}
KILL_DELAY=${HP_LAB_KILL_DELAY:-10}
SCHED_ITERATION=${HP_LAB_SCHED_ITERATION:-2}
NODE_FAIL_REQUEUE=${HP_LAB_NODE_FAIL_REQUEUE:-10}
PBS_EXEC=/opt/pbs
PBS_VERSION=23.06.06
NET=10.77.0
BRIDGE=hp-br0
HEAD=hp-head
NODES=${HP_LAB_NODES:-3}
LINK=${HP_LAB_LINK:-}
MOMS=$(for ((i = 1; i <= NODES; i++)); do printf 'hp-n%s ' "$i"; done)
MOMS=${MOMS% }
NCPUS=2
JOB_USER=${HP_LAB_USER:-hpuser}
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Build dependencies (Debian 12 names) and run-time packages, as measured in shared/pbs-lab/NOTES.md.
PACKAGES="gcc make libtool libhwloc-dev libx11-dev libxt-dev libedit-dev libical-dev libncurses-dev perl
postgresql-server-dev-all postgresql-contrib python3-dev tcl-dev tk-dev swig libexpat1-dev libssl-dev libxext-dev
libxft-dev autoconf automake g++ libcjson-dev expat libedit2 postgresql python3 sudo tcl tk libical3 iptables"

cannot() { echo "pbs lab: $*" >&2; exit 3; }
fail() { echo "pbs lab: $*" >&2; exit 1; }
addr() { case $1 in "$HEAD") echo "$NET.100" ;; *) echo "$NET.${1#hp-n}" ;; esac; }
on() { "$HERE/onpbs" "$@"; }

# The PID a daemon wrote into its lock file (or PostgreSQL into postmaster.pid), if that process still runs.
lock_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -n 1 "$1" 2>/dev/null | tr -dc 0-9)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
# host name:lock file, for every daemon up starts
daemons() {
    local mom
    for mom in $MOMS; do echo "$mom:/var/spool/pbs-$mom/mom_priv/mom.lock"; done
    echo "$HEAD:/var/spool/pbs-$HEAD/sched_priv/sched.lock"
    echo "$HEAD:/var/spool/pbs-$HEAD/server_priv/server.lock"
    echo "$HEAD:/var/spool/pbs-$HEAD/datastore/postmaster.pid"
    echo "$HEAD:/var/spool/pbs-$HEAD/server_priv/comm.lock"
}

check_settings() {
    [[ $NODES =~ ^[1-6]$ ]] || fail "HP_LAB_NODES must be 1 to 6, not '$NODES'"
    "$HERE/shape" check "$LINK" || fail "HP_LAB_LINK must be a speed such as 100mbit or 1gbit, or empty, not '$LINK'"
}

check_machine() {
    [ "$(id -u)" = 0 ] || cannot "needs root (network namespaces, PBS daemons)"
    local tool
    for tool in ip unshare nsenter; do
        command -v $tool >/dev/null || cannot "$tool not found (iproute2, util-linux)"
    done
    if ! ip netns add hp-probe 2>/dev/null; then cannot "cannot create network namespaces here"; fi
    ip netns del hp-probe
}

apt_install() {
    command -v apt-get >/dev/null || cannot "no apt-get here to install OpenPBS's build dependencies"
    echo "pbs lab: installing OpenPBS's build dependencies (about 80 s, once)" >&2
    local _
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do   # another apt may hold the lock
        # shellcheck disable=SC2086  # a list of packages
        if apt-get update -qq >"$LAB_DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends $PACKAGES >>"$LAB_DIR/apt.log" 2>&1; then
            return 0
        fi
        sleep 10
    done
    cannot "apt-get install of OpenPBS's build dependencies failed (see $LAB_DIR/apt.log)"
}

build() {
    mkdir -p "$LAB_DIR"
    if [ -x $PBS_EXEC/sbin/pbs_server.bin ]; then
        echo "pbs lab: OpenPBS already built in $PBS_EXEC"
    else
        [ "$(id -u)" = 0 ] || cannot "needs root (to build OpenPBS into $PBS_EXEC)"
        [ -r "$PBS_SRC" ] || cannot "no OpenPBS source at $PBS_SRC (set HP_LAB_PBS_SRC)"
        apt_install
        echo "pbs lab: building OpenPBS $PBS_VERSION into $PBS_EXEC (about 4 minutes on 2 cores; $LAB_DIR/build.log)" >&2
        local src=$LAB_DIR/src log=$LAB_DIR/build.log started=$SECONDS
        rm -rf "$src" && mkdir -p "$src"
        tar -xzf "$PBS_SRC" -C "$src"
        # configure links whichever python3 is first on PATH (a pyenv one links its own libpython): give it
        # the system Python and a system PATH.
        (cd "$src"/openpbs* && export PATH=$SYS_PATH &&
            ./autogen.sh && ./configure --prefix=$PBS_EXEC PYTHON=/usr/bin/python3 &&
            make -j"$(nproc)" && make install) >"$log" 2>&1 || fail "OpenPBS build failed (see $log)"
        rm -rf "$src"
        echo "pbs lab: OpenPBS built in $((SECONDS - started)) s" >&2
    fi
    # /etc/pbs.conf: the file each host's own copy (/etc/netns/HOST/pbs.conf) is mounted over; starts nothing.
    if [ ! -f /etc/pbs.conf ]; then
        $PBS_EXEC/libexec/pbs_postinstall server $PBS_VERSION $PBS_EXEC /var/spool/pbs postgres \
            >>"$LAB_DIR/build.log" 2>&1 || true   # its systemd/update-rc.d complaints are harmless
        [ -f /etc/pbs.conf ] || fail "pbs_postinstall wrote no /etc/pbs.conf (see $LAB_DIR/build.log)"
    fi
    # Rewritten in place only when needed: the hosts' bind mounts hang on this file's inode, and a new file
    # (sed -i, an editor) silently gives every running daemon and job the machine's own pbs.conf again.
    if grep -q '^PBS_START_.*=1' /etc/pbs.conf; then
        local conf; conf=$(sed 's/^PBS_START_\(.*\)=1/PBS_START_\1=0/' /etc/pbs.conf)
        printf '%s\n' "$conf" >/etc/pbs.conf
    fi
    chmod 4755 $PBS_EXEC/sbin/pbs_iff $PBS_EXEC/sbin/pbs_rcp
    [ -x $PBS_EXEC/libexec/pbs_habitat ] || fail "no $PBS_EXEC/libexec/pbs_habitat (make install did not finish?)"
}

net_up() {
    ip link show $BRIDGE >/dev/null 2>&1 || ip link add $BRIDGE type bridge
    [[ $(ip addr show dev $BRIDGE) == *" $NET.254/"* ]] || ip addr add $NET.254/24 dev $BRIDGE
    ip link set $BRIDGE up
    local table="127.0.0.1 localhost
$NET.254 hp-labhost" host
    for host in $HEAD $MOMS; do table="$table
$(addr "$host") $host"; done
    for host in $HEAD $MOMS; do
        [ -e "/run/netns/$host" ] || ip netns add "$host"
        ip link show "hp-v-$host" >/dev/null 2>&1 || ip link add "hp-v-$host" type veth peer name eth0 netns "$host"
        ip link set "hp-v-$host" master $BRIDGE up
        ip -n "$host" link set lo up
        [[ $(ip -n "$host" addr show dev eth0) == *" $(addr "$host")/"* ]] || ip -n "$host" addr add "$(addr "$host")/24" dev eth0
        ip -n "$host" link set eth0 up
        mkdir -p "/etc/netns/$host"
        printf '%s\n' "$table" >"/etc/netns/$host/hosts"
        # Files only: the machine's name server is unreachable from the hosts, and reverse lookups would wait.
        sed -E 's/^hosts:.*/hosts: files/' /etc/nsswitch.conf >"/etc/netns/$host/nsswitch.conf"
        printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"/etc/netns/$host/resolv.conf"
    done
    for host in $MOMS; do "$HERE/shape" set "$LINK" "hp-v-$host" "$host"; done
}

# Hosts an earlier, larger lab left: their mom stopped, what else runs there killed, the namespace removed (their
# nodes leave the server in configure_server).
drop_extra_hosts() {
    local ns pid left
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hp-n[0-9]+$' || true); do
        (( ${ns#hp-n} <= NODES )) && continue
        if pid=$(lock_pid "/var/spool/pbs-$ns/mom_priv/mom.lock"); then stop_pids "$pid"; fi
        mapfile -t left < <(ip netns pids "$ns" 2>/dev/null)
        [ ${#left[@]} = 0 ] || kill -KILL "${left[@]}" 2>/dev/null || true
        ip link del "hp-v-$ns" 2>/dev/null || true
        ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    done
}

# Each host's pbs.conf, PBS_HOME skeleton and (moms) mom_priv/config. Prints "changed" when a running
# daemon's configuration differs from what it was started with.
host_files() {
    local host=$1 role=$2 server=0 mom=1 conf home=/var/spool/pbs-$1
    [ "$role" = server ] && server=1 mom=0
    conf="PBS_EXEC=$PBS_EXEC
PBS_SERVER=$HEAD
PBS_START_SERVER=$server
PBS_START_SCHED=$server
PBS_START_COMM=$server
PBS_START_MOM=$mom
PBS_HOME=$home
PBS_TMPDIR=/var/tmp/pbs-$host
PBS_CORE_LIMIT=unlimited"
    [ "$conf" = "$(cat "/etc/netns/$host/pbs.conf" 2>/dev/null)" ] || { printf '%s\n' "$conf" >"/etc/netns/$host/pbs.conf"; echo changed; }
    mkdir -p "/var/tmp/pbs-$host" && chmod 1777 "/var/tmp/pbs-$host"
    if [ "$role" = server ]; then
        [ -d "$home/server_priv" ] || PBS_CONF_FILE=/etc/netns/$host/pbs.conf \
            $PBS_EXEC/libexec/pbs_postinstall server $PBS_VERSION $PBS_EXEC "$home" postgres sameconf \
            >>"$LAB_DIR/up.log" 2>&1 || true
        [ -d "$home/server_priv" ] || fail "pbs_postinstall made no $home/server_priv (see $LAB_DIR/up.log)"
    else
        [ -d "$home/mom_priv" ] || PBS_CONF_FILE=/etc/netns/$host/pbs.conf \
            $PBS_EXEC/libexec/pbs_postinstall execution $PBS_VERSION $PBS_EXEC "$home" sameconf \
            >>"$LAB_DIR/up.log" 2>&1 || true
        [ -d "$home/mom_priv" ] || fail "pbs_postinstall made no $home/mom_priv (see $LAB_DIR/up.log)"
        # $usecp: a shared file system, output files are copied with cp from anywhere; polls every 1-2 s, so
        # walltime and kill_delay are enforced within ~1 s (the defaults poll every 10 s, growing to 120 s).
        conf="\$clienthost $HEAD
\$usecp *:/ /
\$min_check_poll 1
\$max_check_poll 2"
        [ "$conf" = "$(cat "$home/mom_priv/config" 2>/dev/null)" ] || { printf '%s\n' "$conf" >"$home/mom_priv/config"; echo changed; }
    fi
}

# Whether the daemon PID still sees its host's files over /etc (the bind mounts `ip netns exec` made are
# lost when a file in /etc is replaced by a new one: sed -i, apt, an editor).
sees_host_files() {  # PID HOST
    local f
    for f in /etc/netns/"$2"/*; do
        [ "$(nsenter -t "$1" -m stat -L -c %d:%i "/etc/${f##*/}" 2>/dev/null)" = "$(stat -L -c %d:%i "$f")" ] || return 1
    done
}

running() {
    local entry pid
    for entry in $(daemons); do
        pid=$(lock_pid "${entry#*:}") || return 1
        sees_host_files "$pid" "${entry%%:*}" || { echo "pbs lab: ${entry##*/} on ${entry%%:*} lost its host's /etc files; restarting" >&2; return 1; }
    done
}

# qmgr settings; idempotent, so applied at every up.
configure_server() {
    local c mom i
    for c in "set server flatuid=true" "set server job_history_enable=1" \
             "set server scheduler_iteration=$SCHED_ITERATION" "set server mailer=/bin/true" \
             "set server acl_roots=root" "set server node_fail_requeue=$NODE_FAIL_REQUEUE" \
             "set queue workq kill_delay=$KILL_DELAY"; do
        on $HEAD qmgr -c "$c" || fail "qmgr -c '$c' failed"
    done
    for ((i = NODES + 1; i <= 6; i++)); do
        on $HEAD qmgr -c "list node hp-n$i" >/dev/null 2>&1 || continue
        on $HEAD qmgr -c "delete node hp-n$i" || fail "cannot delete node hp-n$i (HP_LAB_NODES=$NODES; a job still on it?)"
    done
    for mom in $MOMS; do
        on $HEAD qmgr -c "list node $mom" >/dev/null 2>&1 || on $HEAD qmgr -c "create node $mom" || fail "cannot create node $mom"
        # whatever the machine's core count, as the tests' select statements assume
        on $HEAD qmgr -c "set node $mom resources_available.ncpus=$NCPUS" || fail "cannot set ncpus on $mom"
    done
    forget_finished_jobs
}

# Earlier sessions' finished jobs leave the history: a server restarted after an unclean stop may hand out their
# ids again ("qsub: Job with requested ID already exists", seen on the lab). Only finished jobs go.
forget_finished_jobs() {
    local finished
    finished=$(on $HEAD qselect -x -s F 2>/dev/null | tr '\n' ' ') || finished=""
    [ -z "${finished// /}" ] && return 0
    # shellcheck disable=SC2086  # a list of job ids
    on $HEAD qdel -x -W force $finished >/dev/null 2>&1 || true
}

wait_free() {
    local free=0 _
    for _ in $(seq 300); do
        free=$(on $HEAD pbsnodes -a -F json 2>/dev/null | grep -cE '"state":[[:space:]]*"free"' || true)
        [ "$free" -ge "$NODES" ] && return 0
        sleep 0.2
    done
    on $HEAD pbsnodes -aS >&2 || true
    fail "only $free of $NODES moms became free; see /var/spool/pbs-*/*_logs/ and $LAB_DIR/up.log"
}

start_host() {  # HOST DAEMON...
    local host=$1 home=/var/spool/pbs-$1 daemon; shift
    if [ ! -f "$home/pbs_version" ] || { [ "$host" = $HEAD ] && [ ! -d "$home/datastore" ]; }; then
        on "$host" $PBS_EXEC/libexec/pbs_habitat >>"$LAB_DIR/up.log" 2>&1 || fail "pbs_habitat failed on $host (see $LAB_DIR/up.log)"
    fi
    for daemon in "$@"; do
        on "$host" "$PBS_EXEC/sbin/$daemon" >>"$LAB_DIR/up.log" 2>&1 || fail "$daemon did not start on $host (see $LAB_DIR/up.log)"
    done
}

up() {
    check_settings
    mkdir -p "$LAB_DIR/shared" && chmod 1777 "$LAB_DIR/shared"
    check_machine
    build >/dev/null
    id "$JOB_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$JOB_USER" || fail "cannot create job user $JOB_USER"
    net_up
    drop_extra_hosts
    local changed="" host
    changed+=$(host_files $HEAD server)
    for host in $MOMS; do changed+=$(host_files "$host" mom); done
    if running && [ -z "$changed" ]; then
        configure_server
        wait_free
        echo "pbs lab: already up (hosts $HEAD, $MOMS; links ${LINK:-unshaped}); submit with $HERE/onpbs $HEAD qsub ..."
        return
    fi
    stop_daemons
    # What /etc/init.d/pbs start does, without its boot-time check (the first start after a boot would go to
    # the background): pbs_habitat readies PBS_HOME (the server's first time: its PostgreSQL datastore and
    # queue workq), then each daemon forks into the background and writes its lock file.
    start_host $HEAD pbs_comm pbs_sched pbs_server
    local _
    for _ in $(seq 150); do on $HEAD qstat -B >/dev/null 2>&1 && break; sleep 0.2; done
    configure_server
    for host in $MOMS; do start_host "$host" pbs_mom; done
    wait_free
    echo "pbs lab: up (hosts $HEAD, $MOMS; links ${LINK:-unshaped}); submit with $HERE/onpbs $HEAD qsub ..."
}

stop_pids() {  # PID...: TERM together, then KILL what is left after 10 s
    local pid _ left
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        left=""
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left=1; done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

stop_daemons() {
    local jobs _ entry pid
    if lock_pid "/var/spool/pbs-$HEAD/server_priv/server.lock" >/dev/null; then
        jobs=$(timeout 10 "$HERE/onpbs" $HEAD qselect 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # qdel, then (after the queue's kill_delay and some) qdel -W force, which leaves the output in the spool
            # shellcheck disable=SC2086  # a list of job ids
            timeout 10 "$HERE/onpbs" $HEAD qdel $jobs >/dev/null 2>&1 || true
            for _ in $(seq $((KILL_DELAY * 5 + 25))); do
                jobs=$(timeout 10 "$HERE/onpbs" $HEAD qselect 2>/dev/null || true)
                [ -z "$jobs" ] && break
                sleep 0.2
            done
            # shellcheck disable=SC2086
            [ -z "$jobs" ] || timeout 10 "$HERE/onpbs" $HEAD qdel -W force $jobs >/dev/null 2>&1 || true
        fi
    fi
    # Each daemon takes ~2 s to go after its TERM: the moms (they kill what is left of their jobs) and the
    # scheduler together, then the server (it stops its PostgreSQL datastore) and pbs_comm, then the
    # datastore's postmaster by its own PID if it is still there.
    local group pids
    for group in "mom.lock sched.lock" "server.lock comm.lock" "postmaster.pid"; do
        pids=()
        for entry in $(daemons); do
            [[ " $group " == *" ${entry##*/} "* ]] || continue
            pid=$(lock_pid "${entry#*:}") || continue
            case $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) in
                *pbs_*|*postgres*) pids+=("$pid") ;;
            esac
        done
        [ ${#pids[@]} = 0 ] || stop_pids "${pids[@]}"
    done
}

down() {
    stop_daemons
    local ns left=()
    # What is still in the hosts: qsub's background daemons (they wait 60 s for more submissions) and what
    # jobs left behind (a root job's ranks outlive it, see above). TERM, KILL after 5 s.
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hp-(head|n[0-9]+)$' || true); do
        mapfile -t -O ${#left[@]} left < <(ip netns pids "$ns" 2>/dev/null)
    done
    if [ ${#left[@]} -gt 0 ]; then
        echo "pbs lab: ending ${#left[@]} processes left in the hosts: $(ps -o comm= -p "$(IFS=,; echo "${left[*]}")" 2>/dev/null | sort | uniq -c | awk '{printf "%s %s; ", $1, $2}')" >&2
        kill -TERM "${left[@]}" 2>/dev/null || true
        local _ pid alive
        for _ in $(seq 50); do
            alive=""
            for pid in "${left[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ -z "$alive" ] && break
            sleep 0.1
        done
        kill -KILL "${left[@]}" 2>/dev/null || true
    fi
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hp-(head|n[0-9]+)$' || true); do
        ip link del "hp-v-$ns" 2>/dev/null || true
        ip netns del "$ns"
    done
    rm -rf /etc/netns/$HEAD /etc/netns/hp-n[0-9]*
    ip link del $BRIDGE 2>/dev/null || true
    echo "pbs lab: down (logs in /var/spool/pbs-hp-*/*_logs and $LAB_DIR; job files stay in $LAB_DIR/shared)"
}

status() {
    local entry pid lines="" running=0 all=0
    for entry in $(daemons); do
        all=$((all + 1))
        if pid=$(lock_pid "${entry#*:}"); then
            running=$((running + 1)); lines+="${entry%%:*} ${entry##*/} running, pid $pid"$'\n'
        else
            lines+="${entry%%:*} ${entry##*/} not running"$'\n'
        fi
    done
    [ $running = 0 ] && { echo "pbs lab: not running"; return 1; }
    printf '%s' "$lines"
    [ $running = $all ] || return 1
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hp-n[0-9]+$' | sort -V || true); do
        echo "$ns link: $("$HERE/shape" show "hp-v-$ns" "$ns")"
    done
    timeout 10 "$HERE/onpbs" $HEAD pbsnodes -aS
}

case ${1:-} in
    build) build ;;
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 build|up|down|status" >&2; exit 2 ;;
esac
