#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (slurmctld + slurmd + munge), for the provider tests.
# Idempotent. Prints nothing on stdout but the word READY; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
require_root_debian
apt_install slurmctld slurmd slurm-client munge

dir="$harness_root/slurm"
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
host=$(hostname -s)
ensure_hostname_resolves

node_ready() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && node_ready; then echo READY; exit 0; fi

# munge: the key must belong to munge and be 0400; munged must run as munge.
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
fi
wait_until 10 sh -c 'munge -n | unmunge' || die "munge is not answering"

cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ { print int($2/1024) }' /proc/meminfo)
real_mb=$(( mem_mb > 1024 ? mem_mb - 512 : mem_mb / 2 ))
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
# Written by tests/harness/slurm.sh: a one-node cluster on loopback for Parsl.NET's tests.
ClusterName=parsltest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
rm -f /etc/slurm/cgroup.conf

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -c || die "slurmctld did not start (see $dir/log/slurmctld.log)"
wait_until 20 scontrol ping || die "slurmctld is not answering (see $dir/log/slurmctld.log)"
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || die "slurmd did not start (see $dir/log/slurmd.log)"
if ! wait_until 30 node_ready; then
    scontrol update nodename="$host" state=resume >/dev/null 2>&1
    wait_until 15 node_ready || die "node $host is not idle: $(sinfo -h -N -o '%T %E' 2>&1)"
fi
echo READY
