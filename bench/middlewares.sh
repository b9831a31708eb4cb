#!/usr/bin/env bash
# What the middleware chain costs: the same ping service without middlewares, with each
# alone and with all of them (protect by an auth service's token, rate limit, CORS, compression,
# rules, a body limit), on one release build, alternating runs, medians.
# Usage: bench/middlewares.sh [--seconds 10] [--repeat 3]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10; repeat=3
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release --locked -q
bin=$PWD/target/release/herve
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORT=$port HERVE_HOST=127.0.0.1 HERVE_DATA_DIR=$dir/data HERVE_ACCESS_LOG=false HERVE_LOG=warn \
    AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=bench-secret "$bin" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
H=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf "$H/health" >/dev/null && break; sleep 0.05; done
admin=(-s -u admin:bench-secret)
start() { curl "${admin[@]}" -X POST "$H/services/$1/start" >/dev/null; }
uuid_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["uuid"])'; }
start "$(curl "${admin[@]}" -d name=accounts -d type=auth "$H/services/register" | uuid_of)"
# name|fields (one per line after the name), every row a ping service.
services=(
    "plain|"
    "protect|protect=auth:accounts"
    "rate_limit|rate_limit=1000000/s"
    "cors|cors_origins=https://app.example"
    "compress|compress=true"
    "header_rules|request_headers=X-From: herve
response_headers=X-Frame-Options: DENY"
    "all|protect=auth:accounts
rate_limit=1000000/s
cors_origins=https://app.example
compress=true
request_headers=X-From: herve
response_headers=X-Frame-Options: DENY
max_body_bytes=65536"
)
for row in "${services[@]}"; do
    name=${row%%|*}; fields=${row#*|}
    args=(-d "name=$name" -d type=ping)
    while IFS= read -r field; do [ -n "$field" ] && args+=(--data-urlencode "$field"); done <<< "$fields"
    start "$(curl "${admin[@]}" "${args[@]}" "$H/services/register" | uuid_of)"
done
curl -s -d username=bench -d password=bench-password "$H/accounts/signup" >/dev/null
token=$(curl -s -d username=bench -d password=bench-password "$H/accounts/login" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["token"])')
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$H/all/ping")" = 200 ] \
    || { echo "the guarded service refuses the token" >&2; exit 1; }

# One run: "req/s p99_ms".
run() {
    wrk -t2 -c64 -d"${seconds}s" --latency "$@" | awk '
        /Requests\/sec/ {rps=$2}
        $1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; p99=v}
        END {printf "%s %.2f\n", rps, p99}'
}
declare -A rps p99
for _ in $(seq "$repeat"); do
    for row in "${services[@]}"; do
        name=${row%%|*}
        read -r r p < <(run -H "Authorization: Bearer $token" -H "Origin: https://app.example" \
            -H "Accept-Encoding: gzip, br" "$H/$name/ping")
        rps[$name]+="$r "; p99[$name]+="$p "
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# shellcheck disable=SC2086
base=$(median ${rps[plain]})
echo "| ping service with (wrk -t2 -c64 -d${seconds}s, a token, an Origin and Accept-Encoding sent, median of $repeat) | req/s | p99 ms | vs none |"
echo "|---|---:|---:|---:|"
for row in "${services[@]}"; do
    name=${row%%|*}
    # shellcheck disable=SC2086
    r=$(median ${rps[$name]}); p=$(median ${p99[$name]})
    label=$name; [ "$name" = plain ] && label="no middleware"
    [ "$name" = all ] && label="all of them (+ max_body_bytes)"
    python3 -c "print(f'| $label | {$r:.0f} | $p | {($r/$base-1)*100:+.1f}% |')"
done
