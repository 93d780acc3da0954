#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for tests/slurm (idempotent).
# Installs slurm-wlm and munge (Debian) if missing, writes a minimal slurm.conf for localhost,
# starts munged, slurmctld and slurmd (no systemd needed) and waits for the node to be idle.
# Exits non-zero with one line saying why when it cannot. Stop it with:  tests/slurm/start_cluster.sh stop
set -u
die() { echo "start_cluster.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (installs packages, runs slurmd as root)"

STATE=${SLURM_TEST_STATE:-/var/spool/slurm-test}
CONF=/etc/slurm/slurm.conf

if [ "${1:-}" = stop ]; then
    for d in slurmd slurmctld munged; do
        f=$STATE/$d.pid; [ "$d" = munged ] && f=/run/munge/munged.pid
        [ -s "$f" ] && pid=$(cat "$f") && kill "$pid" 2>/dev/null \
            && for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    done
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq slurm-wlm munge) >/tmp/slurm-test-apt.log 2>&1 \
        || die "apt-get install slurm-wlm munge failed (see /tmp/slurm-test-apt.log)"
fi

HOST=$(hostname -s)
CPUS=$(nproc --all)
mkdir -p "$STATE/ctld" "$STATE/d" /var/log/slurm /run/munge /var/lib/munge /var/log/munge /etc/slurm
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null

want=$(cat <<CONF
# written by tests/slurm/start_cluster.sh: a single-node test cluster
ClusterName=dwftest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
)
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
    printf '%s\n' "$want" > "$CONF" || die "cannot write $CONF"
    changed=1
else
    changed=0
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! alive /run/munge/munged.pid; then
    [ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    su -s /bin/sh munge -c "munged" 2>/tmp/slurm-test-munged.err || munged --force 2>>/tmp/slurm-test-munged.err \
        || die "munged did not start: $(tail -1 /tmp/slurm-test-munged.err)"
    sleep 1
fi
munge -n | unmunge >/dev/null 2>&1 || die "munge credential round-trip failed (munge -n | unmunge)"

if [ "$changed" = 1 ]; then
    for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do alive "$f" && kill "$(cat "$f")"; done
    sleep 2
fi
if ! alive "$STATE/slurmctld.pid"; then
    slurmctld 2>/tmp/slurm-test-slurmctld.err || die "slurmctld did not start: $(tail -1 /tmp/slurm-test-slurmctld.err)"
fi
if ! alive "$STATE/slurmd.pid"; then
    slurmd 2>/tmp/slurm-test-slurmd.err || die "slurmd did not start: $(tail -1 /tmp/slurm-test-slurmd.err)"
fi

for _ in $(seq 30); do
    st=$(sinfo -h -N -o %T 2>/dev/null | head -1)
    case "$st" in idle*|mixed*|allocated*) echo "slurm up: node $HOST ($CPUS CPUs), partition debug"; exit 0;; esac
    sleep 1
done
die "node $HOST not idle after 30 s (sinfo state: '${st:-no answer}'; see /var/log/slurm/slurmctld.log and slurmd.log)"
