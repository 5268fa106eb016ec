# shellcheck shell=bash
# Sourced by the scripts that start chatsys servers on this machine for a check: a free port, and a wait
# until a server answers /readyz.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() { # url
  for _ in $(seq 1 100); do
    if curl -fsS "$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$1 never became ready" >&2
  return 1
}
