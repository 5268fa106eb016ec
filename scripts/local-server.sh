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

# Starts the standalone server of BIN_DIR on a free port, its data and log in WORK_DIR, further arguments
# passed on; once it is ready, sets `server` (its pid) and `base` (its URL) for the caller.
# shellcheck disable=SC2034 # server and base are the function's answers
start_standalone() { # bin_dir, work_dir, arguments...
  local bin_dir=$1 work_dir=$2 port
  shift 2
  port=$(free_port)
  base="http://127.0.0.1:$port"
  "$bin_dir/chatsys-api" standalone --listen "127.0.0.1:$port" --data-dir "$work_dir/data" "$@" \
    >"$work_dir/server.log" 2>&1 &
  server=$!
  wait_ready "$base" || { cat "$work_dir/server.log" >&2; return 1; }
}

# Stops the server `start_standalone` started, if it did, and waits for it to exit: it flushes its
# search index on SIGTERM, so its data directory is still written until then (a removal racing it
# once failed with "Directory not empty").
stop_standalone() {
  if [[ -n ${server:-} ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
}
