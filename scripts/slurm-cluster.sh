#!/usr/bin/env bash
# A private single-node Slurm cluster for tests and trying the sweep's --slurm mode (run as root).
#
#   scripts/slurm-cluster.sh start DIR   start munged (if not running), slurmctld and slurmd with
#                                        state, spool, logs and pid files under DIR; prints the
#                                        line to export: SLURM_CONF=DIR/slurm.conf
#   scripts/slurm-cluster.sh start-two DIR
#                                        the same with two nodes on this host, nodeA and nodeB:
#                                        one slurmd each (slurmd -N), with its own port, spool
#                                        dir, log and pid file; half the CPUs each (at least 1)
#   scripts/slurm-cluster.sh stop DIR    stop, by their pid files, the daemons this script started
#
# Ports: SLURMCTLD_PORT (16817), SLURMD_PORT (16818; nodeB takes SLURMD_PORT_B, default +1).
# SLURMD_TIMEOUT (60): seconds before a silent node is marked DOWN (fits the sweep's heartbeat).
# Needs Debian's slurmctld, slurmd, slurm-client and munge packages. Nothing outside DIR is
# touched except munge's key (/etc/munge/munge.key, created with mungekey when missing) and its
# run directory (/run/munge), which munged needs.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[[ ($cmd == start || $cmd == start-two || $cmd == stop) && -n $dir ]] \
    || { echo "usage: $0 start|start-two|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop_pidfile() {  # $1: pid file of a daemon this script started
    [[ -s $1 ]] || return 0
    local pid; pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$1"
}

if [[ $cmd == stop ]]; then
    for pidfile in "$dir"/slurmd*.pid; do stop_pidfile "$pidfile"; done
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"          # only present when this script started munged
    exit 0
fi

[[ $(id -u) == 0 ]] || { echo "slurm-cluster.sh: needs root" >&2; exit 1; }
for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin
    command -v "$tool" >/dev/null || { echo "slurm-cluster.sh: $tool not installed" >&2; exit 1; }
done

# munge: one key, one daemon (shared with any munged already running on this machine).
if ! munge -n >/dev/null 2>&1; then      # no working munged yet
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- munged 2>"$dir/munged.err" \
        || { echo "slurm-cluster.sh: munged did not start: $(cat "$dir/munged.err")" >&2; exit 1; }
    # munged daemonises and writes its pid file in /run/munge; keep a copy to stop it by.
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$dir/munged.pid"
fi

host=$(hostname -s)
cpus=$(nproc)
ctld_port=${SLURMCTLD_PORT:-16817}
port_a=${SLURMD_PORT:-16818}
port_b=${SLURMD_PORT_B:-$((port_a + 1))}
if [[ $cmd == start-two ]]; then
    nodes=(nodeA nodeB)
    per_node=$(( cpus / 2 > 0 ? cpus / 2 : 1 ))
    node_lines="NodeName=nodeA NodeHostname=$host NodeAddr=127.0.0.1 Port=$port_a CPUs=$per_node State=UNKNOWN
NodeName=nodeB NodeHostname=$host NodeAddr=127.0.0.1 Port=$port_b CPUs=$per_node State=UNKNOWN"
    node_list=nodeA,nodeB
    spool="$dir/spool/%n"; slurmd_pid="$dir/slurmd-%n.pid"; slurmd_log="$dir/log/slurmd-%n.log"
    mkdir -p "$dir/spool/nodeA" "$dir/spool/nodeB"
else
    nodes=("$host")
    node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN"
    node_list=$host
    spool="$dir/spool"; slurmd_pid="$dir/slurmd.pid"; slurmd_log="$dir/log/slurmd.log"
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat > "$dir/slurm.conf" <<CONF
ClusterName=fmnist-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$port_a
AuthType=auth/munge
# Credential lifetime; it is also how long a requeued job waits before it may start again
# (default 120 s): short here so a requeue test takes seconds, not minutes.
AuthInfo=cred_expire=${SLURM_CRED_EXPIRE:-10}
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$slurmd_log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=30
# Node timeouts that fit the sweep's heartbeat (a beat every 10 s, taken over after 40 s): a
# node that stops answering is DOWN after SlurmdTimeout (default 300 s), so its tasks leave
# squeue within a minute of the database giving its trial to another node, and --wait is not
# held for minutes by a dead node. SLURMD_TIMEOUT overrides it (tests: 10 s).
SlurmdTimeout=${SLURMD_TIMEOUT:-60}
MessageTimeout=10
# A worker whose database stays away past its retry window saves its trial and exits 75
# (EX_TEMPFAIL): requeued, so it starts again and resumes once the database is back.
RequeueExit=75
MinJobAge=600
$node_lines
PartitionName=debug Nodes=$node_list Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$dir/slurm.conf"
for node in "${nodes[@]}"; do
    if [[ $cmd == start-two ]]; then slurmd -f "$dir/slurm.conf" -N "$node"; else slurmd -f "$dir/slurm.conf"; fi
done
for node in "${nodes[@]}"; do
    for _ in $(seq 100); do
        state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
        [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
        sleep 0.2
    done
    [[ ${state:-} == idle* || ${state:-} == mix* || ${state:-} == alloc* ]] || {
        echo "slurm-cluster.sh: node $node did not come up (state '${state:-none}'); see $dir/log" >&2
        exit 1
    }
done
echo "SLURM_CONF=$dir/slurm.conf"
