#!/usr/bin/env bash
# Requests per second of the componentize-py hello guest with instance reuse on
# (wasmhost's defaults) and off (--max-instance-reuse-count 1), at one client
# connection and at 50, for one server process and for --workers 2, plus the
# same guest under `wasmtime serve` for reference. Each setup runs ROUNDS
# times, the setups taking turns (A B C ... A B C ...), so that slow and fast
# phases of a shared machine fall on all of them; the table shows medians.
#
#   benchmarks/reuse.sh [-d 5s] [-r 3] [GUEST]      # GUEST defaults to hello
set -euo pipefail
cd "$(dirname "$0")/.."

duration=5s
rounds=3
while getopts "d:r:" opt; do
  case "$opt" in
    d) duration=$OPTARG ;;
    r) rounds=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
guest=${1:-hello}
component=$(python3 -c "import sys; sys.path.insert(0, '.'); from guests.build import build_guest; print(build_guest('$guest'))")
rps() { scripts/wasmtime-server-rps.sh -d "$duration" "$@" | sed 's/.*rps=//; s/\..*//'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : int((v[NR/2] + v[NR/2+1]) / 2)}'; }
ratio() { python3 -c "print(f'{$1 / $2:.1f}x')"; }

setups=("wasmhost|" "wasmhost|--max-instance-reuse-count 1"
        "wasmhost|--workers 2" "wasmhost|--workers 2 --max-instance-reuse-count 1"
        "wasmtime|" "wasmtime|--max-instance-reuse-count 128")
declare -A runs result
for c in 1 50; do
  for _ in $(seq "$rounds"); do
    for setup in "${setups[@]}"; do
      server=${setup%%|*}
      flags=${setup#*|}
      # shellcheck disable=SC2086  # flags are words
      runs[$setup,$c]+="$(rps -s "$server" -c "$c" "$component" $flags) "
    done
  done
done
echo "| server | flags | -c 1 | -c 50 |"
echo "|---|---|---|---|"
for setup in "${setups[@]}"; do
  for c in 1 50; do
    # shellcheck disable=SC2086  # the runs are words
    result[$setup,$c]=$(median ${runs[$setup,$c]})
  done
  server=${setup%%|*}
  flags=${setup#*|}
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
echo "(guest: $guest, hey -z $duration, median of $rounds rounds, $(nproc) cores)"
for setup in "${setups[@]}"; do
  echo "runs: ${setup/|/ } -c 1: ${runs[$setup,1]}| -c 50: ${runs[$setup,50]}"
done
