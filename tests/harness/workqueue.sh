#!/usr/bin/env bash
# CCTools' Work Queue workers for the WorkQueueExecutor tests: Debian's work_queue_worker (protocol 9, package
# coop-computing-tools) and the protocol-11 work_queue_worker built from the CCTools source that travels beside
# the repository (../shared/third_party/cctools, or $PARSL_CCTOOLS_SRC), cached in $harness_root/cctools.
# The workers are test tools run beside Parsl.NET as separate programs; nothing of them is linked or copied in.
# Idempotent. Prints one line on stdout: READY wq9=PATH wq11=PATH; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
require_root_debian
apt_install coop-computing-tools gcc make libssl-dev zlib1g-dev

wq9=$(command -v work_queue_worker) || die "coop-computing-tools installed no work_queue_worker"

repo=$(cd "$(dirname "$0")/../.." && pwd)
src="${PARSL_CCTOOLS_SRC:-}"
if [ -z "$src" ]; then
    for d in "$repo/../shared/third_party/cctools" "$repo/shared/third_party/cctools"; do
        [ -x "$d/build.sh" ] && { src=$d; break; }
    done
fi
[ -n "$src" ] && [ -x "$src/build.sh" ] || die "the CCTools source (third_party/cctools/build.sh) was not found beside the repository; set PARSL_CCTOOLS_SRC to its folder"

prefix="$harness_root/cctools"
mkdir -p "$harness_root"
# One build at a time: two test runs may start together.
exec 9>"$harness_root/cctools.lock"
flock 9
if [ ! -x "$prefix/bin/work_queue_worker" ]; then
    "$src/build.sh" "$prefix" >&2 || die "building CCTools from $src failed"
fi
flock -u 9
wq11="$prefix/bin/work_queue_worker"
[ -x "$wq11" ] || die "$wq11 was not built"
echo "READY wq9=$wq9 wq11=$wq11"
