#!/usr/bin/env bash
# A one-host Grid Engine 8 cell on this machine (sge_qmaster + sge_execd, queue all.q), for the provider tests.
# Idempotent. Prints READY on stdout when a job can run; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
require_root_debian
apt_install gridengine-master gridengine-exec gridengine-client

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
common="$SGE_ROOT/$SGE_CELL/common"
dir="$harness_root/gridengine"
mkdir -p "$dir"
host=$(hostname -s)
ensure_hostname_resolves

queue_ready() { qstat -f -q all.q 2>/dev/null | awk -v q="all.q@$host" '$1 == q { found=1; if (NF >= 6) bad=1 } END { exit !(found && !bad) }'; }

# The non-interactive install leaves act_qmaster empty; loopback clients resolve to "localhost", so alias it.
echo "$host" > "$common/act_qmaster"
echo "$host localhost" > "$common/host_aliases"
chown sgeadmin:sgeadmin "$common/act_qmaster" "$common/host_aliases"

pgrep -x sge_qmaster >/dev/null || /usr/sbin/sge_qmaster || die "sge_qmaster did not start"
wait_until 60 qconf -sconf || die "sge_qmaster is not answering (see /var/spool/gridengine/qmaster/messages)"

# root may submit (min_uid/min_gid 0); schedule every second (the 15 s default makes a job take 30 s); start job
# shells as plain shells, not login shells, so an account's login scripts cannot stall or change a block.
qconf -sconf > "$dir/global"
sed -i -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' -e 's/^login_shells .*/login_shells sh/' "$dir/global"
qconf -Mconf "$dir/global" >&2 || die "qconf -Mconf failed"
qconf -ssconf > "$dir/sched"
sed -i 's/^schedule_interval .*/schedule_interval 0:0:1/' "$dir/sched"
qconf -Msconf "$dir/sched" >&2 || die "qconf -Msconf failed"
qconf -ah "$host" >&2 || true
qconf -as "$host" >&2 || true
if ! qconf -se "$host" >/dev/null 2>&1; then
    printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$host" > "$dir/exec"
    qconf -Ae "$dir/exec" >&2 || die "qconf -Ae failed"
fi
if ! qconf -shgrp @allhosts >/dev/null 2>&1; then
    printf 'group_name @allhosts\nhostlist %s\n' "$host" > "$dir/hgrp"
    qconf -Ahgrp "$dir/hgrp" >&2 || die "qconf -Ahgrp failed"
fi
if ! qconf -sq all.q >/dev/null 2>&1; then
    # The default template names parallel environments that do not exist; the machine is shared, so no load
    # threshold (an alarm state would keep jobs queued).
    EDITOR=cat qconf -aq all.q 2>/dev/null | grep -E '^[a-z_]+ ' > "$dir/queue"
    sed -i -e 's/^pe_list .*/pe_list NONE/' -e 's/^hostlist .*/hostlist @allhosts/' \
        -e "s/^slots .*/slots $(nproc)/" -e 's/^load_thresholds .*/load_thresholds NONE/' "$dir/queue"
    qconf -Aq "$dir/queue" >&2 || die "qconf -Aq failed"
fi

pgrep -x sge_execd >/dev/null || /usr/sbin/sge_execd || die "sge_execd did not start"
wait_until 90 queue_ready || die "queue all.q@$host is not ready: $(qstat -f 2>&1 | tail -3)"
echo READY
