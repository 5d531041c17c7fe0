#!/bin/bash
# A small real cluster on this one Linux machine, for trying job scripts and launchers:
#   tests/cluster/lab.sh up       hosts, bridge, munge, slurmctld, one slurmd per host (idempotent)
#   tests/cluster/lab.sh down     stop what `up` started (by PID) and remove hosts and bridge
#   tests/cluster/lab.sh status   what is running
# then:  export SLURM_CONF=/tmp/hm-lab/slurm/slurm.conf;  sbatch ... ;  tests/cluster/onnode hm-n1 CMD
# Hosts are network namespaces hm-n1..hm-nN (10.78.0.1..N) and hm-head (10.78.0.100, the controller),
# each with its own hostname, /etc/hosts and /tmp, on bridge hm-br0 (10.78.0.254). Needs root.
# Environment: HM_LAB_DIR (/tmp/hm-lab), HM_LAB_NODES (3; 1 to 6), HM_LAB_LINK (each host's link speed both
# ways, a tc rate such as 200mbit, shaped with tbf; empty: unshaped), HM_LAB_CPUS (4 per host), HM_LAB_KILLWAIT (30 s, as Slurm's default: SIGKILL that long after TERM),
# HM_LAB_CRED_EXPIRE (10 s: also the delay before a requeued job starts again), HM_LAB_SHARED (more
# paths under /tmp the hosts must see, such as a virtual environment). Exit status 3: the machine does not
# permit a lab (not root, no network namespaces, packages not installable); 1: anything else failed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LAB_DIR=${HM_LAB_DIR:-/tmp/hm-lab}
NODES=${HM_LAB_NODES:-3}
LINK=${HM_LAB_LINK:-}
CPUS=${HM_LAB_CPUS:-4}
KILLWAIT=${HM_LAB_KILLWAIT:-30}
CRED_EXPIRE=${HM_LAB_CRED_EXPIRE:-10}
NET=10.78.0
BRIDGE=hm-br0
HEAD=hm-head
SD=$LAB_DIR/slurm
MD=$LAB_DIR/munge
export SLURM_CONF=$SD/slurm.conf HM_LAB_DIR=$LAB_DIR

cannot() { echo "lab: $*" >&2; exit 3; }
fail() { echo "lab: $*" >&2; exit 1; }
hosts() { local i; for ((i = 1; i <= NODES; i++)); do echo "hm-n$i"; done; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

check_machine() {
    [ "$(id -u)" = 0 ] || cannot "needs root (network namespaces, mounts, daemons)"
    for tool in ip nsenter unshare mount; do
        command -v $tool >/dev/null || cannot "$tool not found (iproute2, util-linux)"
    done
    if ! ip netns add hm-probe 2>/dev/null; then cannot "cannot create network namespaces here"; fi
    ip netns del hm-probe
    # libpmix-dev: Slurm's pmix plugin opens libpmix.so, which only that package provides; iptables: a host
    # whose network drops every packet (the quiet-host tests).
    local missing="" pkg
    for pkg in slurm-wlm munge libpmix-dev iptables; do dpkg -s $pkg >/dev/null 2>&1 || missing=1; done
    if [ -n "$missing" ]; then
        command -v apt-get >/dev/null || cannot "no apt-get here to install slurm-wlm, munge, libpmix-dev and iptables"
        echo "lab: installing slurm-wlm, munge, libpmix-dev and iptables (about a minute, once)" >&2
        local _
        for _ in 1 2 3 4 5 6; do   # another apt may hold the lock
            if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge libpmix-dev iptables \
                    >"$LAB_DIR/apt.log" 2>&1; then
                return 0
            fi
            sleep 10
        done
        cannot "apt-get install slurm-wlm munge libpmix-dev iptables failed (see $LAB_DIR/apt.log)"
    fi
}

check_settings() {
    [[ $NODES =~ ^[1-6]$ ]] || fail "HM_LAB_NODES must be 1 to 6, not '$NODES'"
    "$HERE/shape" check "$LINK" || fail "HM_LAB_LINK must be a speed such as 100mbit or 1gbit, or empty, not '$LINK'"
}

net_up() {
    ip link show $BRIDGE >/dev/null 2>&1 || ip link add $BRIDGE type bridge
    [[ $(ip addr show dev $BRIDGE) == *" $NET.254/"* ]] || ip addr add $NET.254/24 dev $BRIDGE
    ip link set $BRIDGE up
    local table="127.0.0.1 localhost
$NET.254 hm-labhost
$NET.100 $HEAD" i host addr
    for ((i = 1; i <= NODES; i++)); do table="$table
$NET.$i hm-n$i"; done
    for host in $HEAD $(hosts); do
        addr=$NET.${host#hm-n}; [ "$host" = $HEAD ] && addr=$NET.100
        [ -e "/run/netns/$host" ] || ip netns add "$host"
        ip link show "hm-v-$host" >/dev/null 2>&1 || ip link add "hm-v-$host" type veth peer name eth0 netns "$host"
        ip link set "hm-v-$host" master $BRIDGE up
        ip -n "$host" link set lo up
        [[ $(ip -n "$host" addr show dev eth0) == *" $addr/"* ]] || ip -n "$host" addr add "$addr/24" dev eth0
        ip -n "$host" link set eth0 up
        mkdir -p "/etc/netns/$host"
        printf '%s\n' "$table" > "/etc/netns/$host/hosts"
        # Files only: the machine's name server is unreachable from the hosts, and every reverse lookup
        # (gloo and c10d make them) would wait for it.
        sed -E 's/^hosts:.*/hosts: files/' /etc/nsswitch.conf > "/etc/netns/$host/nsswitch.conf"
        printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "/etc/netns/$host/resolv.conf"
    done
    for host in $(hosts); do "$HERE/shape" set "$LINK" "hm-v-$host" "$host"; done
    # hosts an earlier, larger lab left (their slurmd stopped with the old configuration)
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hm-n[0-9]+$' || true); do
        (( ${ns#hm-n} <= NODES )) && continue
        ip link del "hm-v-$ns" 2>/dev/null || true
        ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    done
}

write_conf() {
    mkdir -p "$SD/state" "$LAB_DIR/shared"
    local host
    for host in $(hosts); do mkdir -p "$SD/spool/$host"; done
    local nodes="hm-n[1-$NODES]" addrs="$NET.[1-$NODES]"
    [ "$NODES" = 1 ] && nodes=hm-n1 addrs=$NET.1
    cat > "$SLURM_CONF.new" <<CONF
ClusterName=hmlab
SlurmctldHost=$HEAD($NET.100)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MD/munge.sock,cred_expire=$CRED_EXPIRE
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SD/state
SlurmdSpoolDir=$SD/spool/%n
SlurmctldPidFile=$SD/slurmctld.pid
SlurmdPidFile=$SD/slurmd-%n.pid
SlurmctldLogFile=$SD/slurmctld.log
SlurmdLogFile=$SD/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=0
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
JobRequeue=1
KillWait=$KILLWAIT
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$nodes NodeAddr=$addrs CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP
CONF
    # Paths under /tmp that the hosts must see besides the lab directory (their /tmp is their own).
    # shellcheck disable=SC2086  # a list of paths, one per word
    printf '%s\n' ${HM_LAB_SHARED:-} > "$LAB_DIR/shared-paths.new"
}

running() {
    alive "$MD/munged.pid" && alive "$SD/slurmctld.pid" || return 1
    local host
    for host in $(hosts); do alive "$SD/slurmd-$host.pid" || return 1; done
}

wait_idle() {
    local idle=0 _
    for _ in $(seq 150); do
        idle=$(timeout 5 sinfo -h -t idle -o %D 2>/dev/null | awk '{s += $1} END {print s + 0}')
        [ "$idle" = "$NODES" ] && return 0
        sleep 0.2
    done
    echo "lab: only $idle of $NODES hosts became idle; see $SD/*.log" >&2
    return 1
}

up() {
    check_settings
    mkdir -p "$LAB_DIR"
    check_machine
    write_conf
    if running && cmp -s "$SLURM_CONF" "$SLURM_CONF.new" && cmp -s "$LAB_DIR/shared-paths" "$LAB_DIR/shared-paths.new"; then
        rm -f "$SLURM_CONF.new" "$LAB_DIR/shared-paths.new"
        net_up
        wait_idle && echo "lab: already up ($NODES hosts, links ${LINK:-unshaped}); export SLURM_CONF=$SLURM_CONF"
        return
    fi
    stop_daemons
    mv "$SLURM_CONF.new" "$SLURM_CONF"
    mv "$LAB_DIR/shared-paths.new" "$LAB_DIR/shared-paths"
    net_up
    mkdir -p "$MD" && chmod 700 "$MD"
    [ -s "$MD/munge.key" ] || head -c 1024 /dev/urandom > "$MD/munge.key"
    chmod 400 "$MD/munge.key"
    munged --force --socket="$MD/munge.sock" --key-file="$MD/munge.key" --pid-file="$MD/munged.pid" \
        --log-file="$MD/munged.log" --seed-file="$MD/munge.seed"
    local _ host
    for _ in $(seq 50); do [ -S "$MD/munge.sock" ] && break; sleep 0.1; done
    # Each daemon forks into the background and writes its PID file; -c: no state from an earlier lab.
    "$HERE/onnode" $HEAD slurmctld -c -f "$SLURM_CONF"
    for host in $(hosts); do "$HERE/onnode" "$host" slurmd -f "$SLURM_CONF" -N "$host"; done
    wait_idle
    echo "lab: up, $NODES hosts, links ${LINK:-unshaped}; export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # PID file: TERM, then KILL after 5 s
    alive "$1" || { rm -f "$1"; return 0; }
    local pid _; pid=$(cat "$1")
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$1"
}

stop_daemons() {
    local jobs f _
    if alive "$SD/slurmctld.pid"; then
        jobs=$(timeout 5 squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs || true
            for _ in $(seq 100); do
                [ -z "$(timeout 5 squeue -h -t R,CG -o %i 2>/dev/null || true)" ] && break
                sleep 0.2
            done
        fi
    fi
    for f in "$SD"/slurmd-*.pid; do [ -e "$f" ] && stop_pid "$f"; done
    stop_pid "$SD/slurmctld.pid"
    stop_pid "$MD/munged.pid"
}

down() {
    stop_daemons
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hm-(head|n[0-9]+)$' || true); do
        ip link del "hm-v-$ns" 2>/dev/null || true
        ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    done
    ip link del $BRIDGE 2>/dev/null || true
    echo "lab: down (logs and job files stay in $LAB_DIR)"
}

status() {
    local f
    for f in "$MD/munged.pid" "$SD/slurmctld.pid" "$SD"/slurmd-*.pid; do
        [ -e "$f" ] || continue
        if alive "$f"; then echo "$(basename "$f" .pid) running, pid $(cat "$f")"; else echo "$(basename "$f" .pid) dead"; fi
    done
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hm-n[0-9]+$' | sort -V || true); do
        echo "$ns link: $("$HERE/shape" show "hm-v-$ns" "$ns")"
    done
    running && timeout 5 sinfo
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
