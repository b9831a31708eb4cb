#!/usr/bin/env bash
# The benchmark: Herve against nginx and HAProxy, on loopback, one table.
# Usage: bench/run.sh [--seconds 10] [--repeat 2] [--connections 64] [--services 10000]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in wrk nginx haproxy python3 openssl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Packaged servers start themselves on install; the benchmark runs its own.
for service in nginx haproxy; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$service" 2>/dev/null || true; fi
done

cargo build --release --locked
ulimit -n 65536 2>/dev/null || true
exec python3 bench/bench.py "$@"
