#!/usr/bin/env python3
"""Cluster benchmark: admin changes per second on PostgreSQL vs SQLite, how long a change
made through one node takes to be routed by the others (p50/p99), and the data plane's
throughput with and without cluster mode (the request path never touches the database).

Starts its own PostgreSQL (initdb into a temporary directory, pg_ctl on a free loopback
port; as the `postgres` account when run as root) and Herve release binaries. Prints
tables.

Usage: cargo build --release && python3 bench/cluster.py [--seconds 10] [--changes 200]
"""

import argparse
import base64
import concurrent.futures
import glob
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERVE = os.path.join(os.path.dirname(__file__), "..", "target", "release", "herve")
ADMIN = ("bench", "bench-secret-bench-secret")
AUTH = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
LUA = os.path.join(os.path.dirname(__file__), "report.lua")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


class Postgres:
    def __init__(self, work):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            sys.exit("PostgreSQL's initdb is not installed (apt-get install postgresql)")
        self.bin = os.path.dirname(found[-1])
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        self.root = os.geteuid() == 0
        if self.root:
            os.chmod(work, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        self.run("initdb", "-D", f"{self.dir}/data", "-U", "herve", "--auth=trust", "--no-sync")
        self.port = free_port()
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "start", "-o",
                 f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200")
        self.url = f"postgres://herve@127.0.0.1:{self.port}/postgres"

    def run(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.dir)

    def stop(self):
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop")


class Herve:
    def __init__(self, work, name, database_url=None):
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), HERVE_HOST="127.0.0.1",
                   HERVE_DATA_DIR=os.path.join(work, name), AUTH_ADMIN_ID=ADMIN[0],
                   AUTH_ADMIN_SECRET=ADMIN[1], HERVE_ACCESS_LOG="false", HERVE_LOG="warn",
                   HERVE_NODE_NAME=name)
        if database_url:
            env["HERVE_DATABASE_URL"] = database_url
        self.process = subprocess.Popen([HERVE], env=env, stdout=subprocess.DEVNULL)
        wait_port(self.port)

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def call(conn, method, path, body=None):
    headers = {"Authorization": AUTH}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, data


def register(conn, name, kind="ping"):
    status, data = call(conn, "POST", "/services/register", f"name={name}&type={kind}")
    if status != 201:
        sys.exit(f"register {name}: {status} {data[:200]}")
    return json.loads(data)["data"]["uuid"]


def changes_per_second(node, seconds, clients=16):
    """Register, start, stop, unregister cycles from `clients` connections; changes/s."""
    deadline = time.time() + seconds

    def client(index):
        conn = node.connection()
        done, n = 0, 0
        while time.time() < deadline:
            n += 1
            uuid = register(conn, f"c{index}-{n}")
            for step in ("start", "stop", "unregister"):
                status, data = call(conn, "POST", f"/services/{uuid}/{step}")
                if status != 200:
                    sys.exit(f"{step}: {status} {data[:200]}")
            done += 4
        return done

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.time() - started)


def propagation(nodes, changes):
    """For each change (a start through the first node), how long until each other
    node routes it; milliseconds."""
    first = nodes[0].connection()
    others = [node.connection() for node in nodes[1:]]
    latencies = []
    for n in range(changes):
        uuid = register(first, f"p{n}")
        status, _ = call(first, "POST", f"/services/{uuid}/start")
        acknowledged = time.perf_counter()
        if status != 200:
            sys.exit(f"start: {status}")
        for conn in others:
            while True:
                conn.request("GET", f"/{uuid}/ping")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    latencies.append((time.perf_counter() - acknowledged) * 1000)
                    break
        call(first, "POST", f"/services/{uuid}/stop")
        call(first, "POST", f"/services/{uuid}/unregister")
    latencies.sort()
    return latencies


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "5s", "-s", LUA, url],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return result["requests"] / (result["duration_us"] / 1e6), result["p99_us"] / 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="length of each timed run")
    parser.add_argument("--changes", type=int, default=200, help="changes timed for propagation")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per contender, alternating")
    args = parser.parse_args()
    if not os.path.exists(HERVE):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="herve-cluster-bench-")
    postgres = Postgres(work)
    started = []
    try:
        lone = Herve(work, "lone")
        started.append(lone)
        a = Herve(work, "a", postgres.url)
        b = Herve(work, "b", postgres.url)
        c = Herve(work, "c", postgres.url)
        started += [a, b, c]

        print(f"Admin changes (register/start/stop/unregister, 16 clients, {args.seconds} s each)")
        sqlite_rate = changes_per_second(lone, args.seconds)
        pg_rate = changes_per_second(a, args.seconds)
        print("| store | changes/s |\n|---|---:|")
        print(f"| SQLite (one Herve) | {sqlite_rate:,.0f} |")
        print(f"| PostgreSQL (through one of three nodes) | {pg_rate:,.0f} |")

        latencies = propagation([a, b, c], args.changes)
        q = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))]
        print(f"\nPropagation: start acknowledged by node a → routed by node b and c "
              f"({len(latencies)} samples)")
        print("| p50 ms | p90 ms | p99 ms | max ms |\n|---:|---:|---:|---:|")
        print(f"| {q(0.5):.2f} | {q(0.9):.2f} | {q(0.99):.2f} | {latencies[-1]:.2f} |")

        conn = lone.connection()
        lone_uuid = register(conn, "bench-ping")
        call(conn, "POST", f"/services/{lone_uuid}/start")
        conn = b.connection()
        node_uuid = register(conn, "bench-ping")
        call(conn, "POST", f"/services/{node_uuid}/start")
        time.sleep(0.5)
        runs = {"alone (SQLite)": [], "node b of three (PostgreSQL)": []}
        for _ in range(args.repeat):
            runs["alone (SQLite)"].append(wrk(f"http://127.0.0.1:{lone.port}/{lone_uuid}/ping", args.seconds))
            runs["node b of three (PostgreSQL)"].append(
                wrk(f"http://127.0.0.1:{b.port}/{node_uuid}/ping", args.seconds))
        print(f"\nData plane: ping service, wrk -t2 -c64 -d{args.seconds}s, {args.repeat} runs "
              f"alternating, medians")
        print("| Herve | req/s | p99 ms |\n|---|---:|---:|")
        for label, results in runs.items():
            print(f"| {label} | {statistics.median(r[0] for r in results):,.0f} | "
                  f"{statistics.median(r[1] for r in results):.2f} |")
    finally:
        for herve in started:
            herve.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
