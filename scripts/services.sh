#!/usr/bin/env bash
# Starts MariaDB, Redis and RabbitMQ on 127.0.0.1 with their default ports, as the tests expect them,
# installing the Debian packages first where one is missing (with those the tools of .ci/tools.sh are
# installed by: curl, unzip, npm and Python's venv; and Chromium, the browser of
# scripts/check-browser.sh, since playwright-core downloads none). A service that already answers is left
# as it is, so this can run any number of times. Used by scripts/test.sh (`make test`) and by CI.
set -euo pipefail

step() { printf '\n==> %s\n' "$*"; }

# Root's commands run as they are; anyone else's through sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

wait_for() { # name, command: waits up to 60 s for the command to succeed
  local name=$1
  shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then
      echo "$name is up"
      return 0
    fi
    sleep 1
  done
  echo "$name did not come up" >&2
  return 1
}

need_packages=()
command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || need_packages+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || [[ -x /usr/sbin/rabbitmq-server ]] || need_packages+=(rabbitmq-server)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
command -v unzip >/dev/null 2>&1 || need_packages+=(unzip)
command -v npm >/dev/null 2>&1 || need_packages+=(npm)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_packages+=(python3-venv)
[[ -x /usr/bin/chromium ]] || need_packages+=(chromium)
if [[ ${#need_packages[@]} -gt 0 ]]; then
  step "installing ${need_packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}"
fi

step "backing services"
if ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_for MariaDB mysqladmin -uroot -h127.0.0.1 ping
# The tests connect as root without a password over TCP, as on the CI machine; Debian's package lets
# root in only through its socket, so that is allowed once here.
if ! mysql -uroot -h127.0.0.1 -e 'SELECT 1' >/dev/null 2>&1; then
  as_root mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket"
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/chatsys-tests.log
fi
wait_for Redis redis-cli -h 127.0.0.1 ping
if ! as_root rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
  as_root rabbitmq-server -detached
fi
wait_for RabbitMQ as_root rabbitmq-diagnostics -q check_port_connectivity
# Tests, fuzzing and the bench declare durable queues of their own; the broker removes them once they have
# gone unused for an hour, so runs do not pile them up (test databases are swept by the tests themselves).
as_root rabbitmqctl -q set_policy --apply-to queues chatsys-test-expiry '^chatsys[._](test|fuzz|bench)' '{"expires":3600000}'
