#!/usr/bin/env bash
# Requests per second of the componentize-py hello guest with instance reuse on
# (wasmhost's defaults) and off (--max-instance-reuse-count 1), at one client
# connection and at 50, for one server process and for --workers 2, plus the
# same guest under `wasmtime serve` for reference. Prints a Markdown table.
#
#   benchmarks/reuse.sh [-d 8s] [GUEST]      # GUEST defaults to hello
set -euo pipefail
cd "$(dirname "$0")/.."

duration=8s
while getopts "d:" opt; do
  case "$opt" in
    d) duration=$OPTARG ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
guest=${1:-hello}
component=$(python3 -c "import sys; sys.path.insert(0, '.'); from guests.build import build_guest; print(build_guest('$guest'))")
rps() { scripts/wasmtime-server-rps.sh -d "$duration" "$@" | sed 's/.*rps=//; s/\..*//'; }
ratio() { python3 -c "print(f'{$1 / $2:.1f}x')"; }

echo "| server | flags | -c 1 | -c 50 |"
echo "|---|---|---|---|"
declare -A result
for setup in "wasmhost|" "wasmhost|--max-instance-reuse-count 1" \
             "wasmhost|--workers 2" "wasmhost|--workers 2 --max-instance-reuse-count 1" \
             "wasmtime|" "wasmtime|--max-instance-reuse-count 128"; do
  server=${setup%%|*}
  flags=${setup#*|}
  for c in 1 50; do
    # shellcheck disable=SC2086  # flags are words
    result[$setup,$c]=$(rps -s "$server" -c "$c" "$component" $flags)
  done
  shown=${flags:-"(defaults)"}
  [ "$server" = wasmtime ] && server="wasmtime serve"
  echo "| $server | $shown | ${result[$setup,1]} | ${result[$setup,50]} |"
done
echo
for c in 1 50; do
  echo "-c $c: wasmhost reuse on / off: $(ratio "${result[wasmhost|,$c]}" "${result[wasmhost|--max-instance-reuse-count 1,$c]}")," \
       "--workers 2: $(ratio "${result[wasmhost|--workers 2,$c]}" "${result[wasmhost|--workers 2 --max-instance-reuse-count 1,$c]}")," \
       "wasmtime serve: $(ratio "${result[wasmtime|--max-instance-reuse-count 128,$c]}" "${result[wasmtime|,$c]}")"
done
echo "(guest: $guest, hey -z $duration, $(nproc) cores)"
