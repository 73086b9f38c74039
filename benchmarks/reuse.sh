#!/usr/bin/env bash
# Requests per second of the componentize-py hello guest with instance reuse on
# (wasmhost's defaults) and off (--max-instance-reuse-count 1), plus the same
# guest under `wasmtime serve` for reference. Prints a Markdown table.
#
#   benchmarks/reuse.sh [-d 8s] [-c 50] [GUEST]      # GUEST defaults to hello
set -euo pipefail
cd "$(dirname "$0")/.."

duration=8s
concurrency=50
while getopts "d:c:" opt; do
  case "$opt" in
    d) duration=$OPTARG ;;
    c) concurrency=$OPTARG ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
guest=${1:-hello}
component=$(python3 -c "import sys; sys.path.insert(0, '.'); from guests.build import build_guest; print(build_guest('$guest'))")
rps() { scripts/wasmtime-server-rps.sh -d "$duration" -c "$concurrency" "$@" | sed 's/.*rps=//'; }

on=$(rps "$component")
off=$(rps "$component" --max-instance-reuse-count 1)
ref_off=$(rps -s wasmtime "$component")
ref_on=$(rps -s wasmtime "$component" --max-instance-reuse-count 128)
ratio=$(python3 -c "print(f'{$on / $off:.1f}')")

echo "| server | flags | requests/s |"
echo "|---|---|---|"
echo "| wasmhost | (defaults: reuse 128) | ${on%.*} |"
echo "| wasmhost | --max-instance-reuse-count 1 | ${off%.*} |"
echo "| wasmtime serve | (defaults: reuse 1) | ${ref_off%.*} |"
echo "| wasmtime serve | --max-instance-reuse-count 128 | ${ref_on%.*} |"
echo
echo "wasmhost reuse on / off: ${ratio}x  (guest: $guest, hey -z $duration -c $concurrency, $(nproc) cores)"
