#!/usr/bin/env bash
# An OpenSSH server on 127.0.0.1 (a free port), with a fresh host key and a client key allowed to log in as the
# unprivileged user parsltest (created here; a plain account, so no login script of root's can stall a session).
# Idempotent. Prints one line on stdout: READY port=<port> user=<user> key=<client private key> fingerprint=<SHA256:...>.
set -uo pipefail
. "$(dirname "$0")/common.sh"
require_root_debian
apt_install openssh-server openssh-client

dir="$harness_root/sshd"
user=parsltest
id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user" || die "useradd $user failed"
# No password, but not locked ("!"), which sshd without PAM refuses even for key logins.
usermod -p '*' "$user" || die "usermod $user failed"
mkdir -p "$dir" /run/sshd
chmod 0755 "$dir"
[ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519" || die "ssh-keygen (host) failed"
[ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/client_ed25519" || die "ssh-keygen (client) failed"
cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
chown "$user" "$dir/authorized_keys"
chmod 0600 "$dir/authorized_keys" "$dir/host_ed25519" "$dir/client_ed25519"
fingerprint=$(ssh-keygen -lf "$dir/host_ed25519.pub" | awk '{ print $2 }')

running() { [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }
if ! running; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
           || shuf -i 20000-60000 -n 1)
    echo "$port" > "$dir/port"
    cat > "$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
CONF
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" || die "sshd did not start (see $dir/sshd.log)"
fi
port=$(cat "$dir/port")
wait_until 15 bash -c "echo > /dev/tcp/127.0.0.1/$port" || die "sshd is not listening on 127.0.0.1:$port"
echo "READY port=$port user=$user key=$dir/client_ed25519 fingerprint=$fingerprint"
