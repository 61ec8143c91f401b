# Shared helpers for the daemon harnesses (sourced, not run). Each harness is idempotent: run it as often
# as you like; it installs what is missing, starts what is not running, and exits 0 once the daemon is ready.
# Exit codes: 0 ready, 2 cannot run here (not root / not Debian: the message says which), 1 failed.

harness_root="${PARSL_HARNESS_DIR:-/tmp/parsl-harness}"

die_unsupported() { echo "SKIP: $*" >&2; exit 2; }
die() { echo "FAILED: $*" >&2; exit 1; }

require_root_debian() {
    [ "$(id -u)" = "0" ] || die_unsupported "must run as root (uid $(id -u)) to install and start daemons"
    [ -f /etc/debian_version ] || die_unsupported "needs Debian (apt-get); /etc/debian_version is missing"
    command -v apt-get >/dev/null || die_unsupported "apt-get not found"
}

# apt_install PKG...: installs only the packages that are missing; `apt-get update` at most once per boot.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local stamp=/tmp/parsl-harness-apt-updated
    if [ ! -f "$stamp" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || die "apt-get update failed"
        touch "$stamp"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
        "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# wait_until SECONDS CMD...: polls CMD every 0.2 s until it succeeds or the time is up.
wait_until() {
    local limit=$1; shift
    local deadline=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

ensure_hostname_resolves() {
    local h; h=$(hostname -s)
    getent hosts "$h" >/dev/null || echo "127.0.0.1 $h" >> /etc/hosts
}
