#!/usr/bin/env bash
# Two builds of Herve, one workload: the cost of a change on the request path.
# Usage: bench/compare.sh BEFORE_REV [AFTER_REV=HEAD] [--seconds 10] [--repeat 3]
# Builds each revision (release) into /tmp/herve-<rev>, then runs wrk -t2 -c64 against
# a ping service through each, alternating, and prints the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1; shift
after=HEAD
if [ $# -gt 0 ] && [[ $1 != --* ]]; then after=$1; shift; fi
seconds=10; repeat=3
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
root=$PWD
build() {
    local rev=$1 out=/tmp/herve-$(git rev-parse --short "$1")
    if [ ! -x "$out" ]; then
        local tree; tree=$(mktemp -d)
        git worktree add -q --detach "$tree" "$rev"
        (cd "$tree" && CARGO_TARGET_DIR="$root/target/compare" cargo build --release --locked -q)
        cp "$root/target/compare/release/herve" "$out"
        git worktree remove --force "$tree"
    fi
    echo "$out"
}
bin_before=$(build "$before"); bin_after=$(build "$after")
run() {
    local bin=$1 dir; dir=$(mktemp -d)
    local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    PORT=$port HERVE_HOST=127.0.0.1 HERVE_DATA_DIR=$dir/data HERVE_ACCESS_LOG=false HERVE_LOG=warn \
        AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=bench-secret "$bin" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
    local uuid
    uuid=$(curl -s -u admin:bench-secret -d name=p -d type=ping "127.0.0.1:$port/services/register" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["uuid"])')
    curl -s -u admin:bench-secret -X POST "127.0.0.1:$port/services/$uuid/start" >/dev/null
    wrk -t2 -c64 -d"${seconds}s" "http://127.0.0.1:$port/$uuid/ping" | awk '/Requests\/sec/ {print $2}'
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
declare -a a b
for _ in $(seq "$repeat"); do
    a+=("$(run "$bin_before")"); b+=("$(run "$bin_after")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
echo "| build | req/s (median of $repeat, wrk -t2 -c64 -d${seconds}s, GET /<uuid>/ping) |"
echo "|---|---:|"
echo "| $before | $ma |"
echo "| $after | $mb |"
python3 -c "print(f'| change | {($mb/$ma-1)*100:+.1f}% |')"
