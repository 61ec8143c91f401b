#!/usr/bin/env bash
# A private RabbitMQ broker on 127.0.0.1 for the endpoint tests: Debian's rabbitmq-server run by hand (not the
# system service) with its own node name, data, logs, config and Erlang cookie under one directory; a plain AMQP
# listener and a TLS listener (a CA and a server certificate made here with openssl) on free ports; a vhost and
# three users made with rabbitmqctl:
#   endpoint  full rights on the vhost (the daemons: they declare their queues and exchanges)
#   client    may publish to endpoint exchanges (parsl.ep.*), declare and read task-group result queues (parsl.tg.*)
#   stranger  may declare and read result queues, may publish nowhere (a client the broker does not allow)
# Idempotent: ports and secrets are chosen once and kept, so a broker stopped and started again listens where it
# did. Usage: rabbitmq.sh [start|stop]. start (default) prints one line on stdout:
#   READY port=<amqp> tls_port=<amqps> vhost=<vhost> ca=<ca.pem> pid=<beam pid> epmd_pid=<pid> dir=<dir>
#   endpoint_password=<pw> client_password=<pw> stranger_password=<pw>
# stop stops the broker and its epmd (by pid) and prints STOPPED.
set -uo pipefail
. "$(dirname "$0")/common.sh"

dir="${PARSL_RABBITMQ_DIR:-$harness_root/rabbitmq}"
mode="${1:-start}"
vhost=parsl
node="parsl-rabbit@localhost"

rmq_env() {
    export HOME="$dir/home"
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
    export RABBITMQ_DIST_PORT="$(cat "$dir/dist_port")"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT="$(cat "$dir/epmd_port")"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" "$@"; }

running() { [ -f "$dir/beam.pid" ] && kill -0 "$(cat "$dir/beam.pid")" 2>/dev/null; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || shuf -i 20000-60000 -n 1
}

stop_broker() {
    if [ -f "$dir/epmd_port" ]; then rmq_env; fi
    if running; then
        local pid; pid=$(cat "$dir/beam.pid")
        ctl stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
        [ -f "$dir/launcher.pid" ] && kill -9 -- "-$(cat "$dir/launcher.pid")" 2>/dev/null
    fi
    rm -f "$dir/beam.pid" "$dir/launcher.pid"
    # epmd is a daemon of its own, started by the first Erlang node on its port: stopped by its pid.
    if [ -f "$dir/epmd_port" ]; then
        local port; port=$(cat "$dir/epmd_port")
        for p in $(pgrep -x epmd); do
            if tr '\0' ' ' < "/proc/$p/environ" 2>/dev/null | grep -q "ERL_EPMD_PORT=$port "; then
                kill "$p" 2>/dev/null
                # Gone before we return: a start right after a stop must not find the old epmd on the port.
                for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$p" 2>/dev/null
            fi
        done
    fi
}

if [ "$mode" = "stop" ]; then
    stop_broker
    echo "STOPPED"
    exit 0
fi

require_root_debian
apt_install rabbitmq-server openssl
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || die "rabbitmq-server is installed but /usr/lib/rabbitmq/bin/rabbitmq-server is missing"

mkdir -p "$dir/home" "$dir/mnesia" "$dir/log" "$dir/tls"
chmod 0700 "$dir" "$dir/home" "$dir/tls"
for f in amqp_port tls_port dist_port epmd_port; do [ -f "$dir/$f" ] || free_port > "$dir/$f"; done
for u in endpoint client stranger; do
    [ -f "$dir/$u.password" ] || (umask 077; openssl rand -hex 16 > "$dir/$u.password")
done
echo '[].' > "$dir/enabled_plugins"

# A CA of the test's own, and a server certificate for 127.0.0.1 / localhost signed by it.
if [ ! -f "$dir/tls/server.pem" ]; then
    (
        cd "$dir/tls" || exit 1
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=parsl-test-ca" \
            -keyout ca.key -out ca.pem >/dev/null 2>&1 || exit 1
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr >/dev/null 2>&1 || exit 1
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile ext.cnf -out server.pem >/dev/null 2>&1 || exit 1
        chmod 0600 ca.key server.key
        chmod 0644 ca.pem server.pem
    ) || die "openssl could not make the test CA and server certificate under $dir/tls"
fi

amqp_port=$(cat "$dir/amqp_port")
tls_port=$(cat "$dir/tls_port")
cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp_port
listeners.ssl.default = 127.0.0.1:$tls_port
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
log.file.level = warning
log.console = false
CONF

rmq_env
if ! running; then
    # Run the broker itself (the /usr/sbin wrapper would switch to the rabbitmq user and its system paths).
    setsid /usr/lib/rabbitmq/bin/rabbitmq-server > "$dir/log/stdout.log" 2>&1 < /dev/null &
    # The launcher script leads its own process group; the Erlang VM is its child.
    echo $! > "$dir/launcher.pid"
    echo $! > "$dir/beam.pid"
fi
# A launcher that ended at once (its ports still held by a broker just stopped, under load) is started once more.
if ! wait_until 20 ctl await_startup; then
    if [ -f "$dir/launcher.pid" ] && ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server >> "$dir/log/stdout.log" 2>&1 < /dev/null &
        echo $! > "$dir/launcher.pid"
        echo $! > "$dir/beam.pid"
    fi
fi
if ! wait_until 90 ctl await_startup; then
    tail -20 "$dir/log/stdout.log" >&2
    die "the broker did not start within 90 s (logs under $dir/log)"
fi
wait_until 30 bash -c "echo > /dev/tcp/127.0.0.1/$amqp_port" || die "the broker is not listening on 127.0.0.1:$amqp_port"
beam=$(pgrep -P "$(cat "$dir/launcher.pid")" beam.smp | head -1)
[ -n "$beam" ] && echo "$beam" > "$dir/beam.pid"

# The vhost, the users and their rights (rabbitmqctl answers 'already exists' on a second run: fine).
ctl add_vhost "$vhost" >/dev/null 2>&1
ctl delete_user guest >/dev/null 2>&1
for u in endpoint client stranger; do
    pw=$(cat "$dir/$u.password")
    ctl add_user "$u" "$pw" >/dev/null 2>&1 || ctl change_password "$u" "$pw" >/dev/null 2>&1
done
ctl set_permissions -p "$vhost" endpoint '.*' '.*' '.*' >/dev/null || die "set_permissions endpoint failed"
ctl set_permissions -p "$vhost" client '^parsl\.tg\..*' '^parsl\.ep\.[^.]+$' '^parsl\.tg\..*' >/dev/null \
    || die "set_permissions client failed"
ctl set_permissions -p "$vhost" stranger '^parsl\.tg\..*' '^$' '^parsl\.tg\..*' >/dev/null || die "set_permissions stranger failed"

epmd_pid=""
for p in $(pgrep -x epmd); do
    if tr '\0' ' ' < "/proc/$p/environ" 2>/dev/null | grep -q "ERL_EPMD_PORT=$ERL_EPMD_PORT "; then epmd_pid=$p; fi
done
echo "READY port=$amqp_port tls_port=$tls_port vhost=$vhost ca=$dir/tls/ca.pem pid=$(cat "$dir/beam.pid") epmd_pid=$epmd_pid dir=$dir endpoint_password=$(cat "$dir/endpoint.password") client_password=$(cat "$dir/client.password") stranger_password=$(cat "$dir/stranger.password")"
