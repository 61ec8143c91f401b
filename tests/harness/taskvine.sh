#!/usr/bin/env bash
# TaskVine's vine_worker (protocol 13) for the TaskVineExecutor tests, built from the CCTools source that travels
# beside the repository (../shared/third_party/cctools, or $PARSL_CCTOOLS_SRC) into $harness_root/cctools (the
# same build the Work Queue tests use). The worker is a test tool run beside Parsl.NET as a separate program;
# nothing of it is linked or copied in.
# Idempotent. Prints one line on stdout: READY vine=PATH; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
require_root_debian
apt_install gcc make libssl-dev zlib1g-dev

repo=$(cd "$(dirname "$0")/../.." && pwd)
src="${PARSL_CCTOOLS_SRC:-}"
if [ -z "$src" ]; then
    for d in "$repo/../shared/third_party/cctools" "$repo/shared/third_party/cctools"; do
        [ -x "$d/build.sh" ] && { src=$d; break; }
    done
fi
prefix="$harness_root/cctools"
mkdir -p "$harness_root"
# One build at a time: the Work Queue tests build the same tree.
exec 9>"$harness_root/cctools.lock"
flock 9
if [ ! -x "$prefix/bin/vine_worker" ]; then
    [ -n "$src" ] && [ -x "$src/build.sh" ] || die "the CCTools source (third_party/cctools/build.sh) was not found beside the repository; set PARSL_CCTOOLS_SRC to its folder"
    "$src/build.sh" "$prefix" >&2 || die "building CCTools from $src failed"
fi
flock -u 9
vine="$prefix/bin/vine_worker"
[ -x "$vine" ] || die "$vine was not built"
echo "READY vine=$vine"
