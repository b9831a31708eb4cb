#!/usr/bin/env python3
"""Herve against nginx and HAProxy on this machine, side by side, in one run.

Run through bench/run.sh (which installs wrk, nginx and haproxy and builds Herve).
Everything listens on loopback; every load is bounded in time. Prints one table:
req/s, p50, p99, max latency, errors and the requests completed per connection
(min/max over the connections of a separate run with one wrk thread per connection),
then the ratios Herve/peer and Herve's memory.
"""

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUA = os.path.join(HERE, "report.lua")

PORTS = {
    "herve": 18080,
    "herve_tls": 18085,
    "nginx_tls": 18086,    # the same certificate and key, the same worker count
    "nginx": 18081,        # return 200, as many workers as Herve has threads
    "upstream": 18082,     # the upstream every proxy talks to (nginx, one worker)
    "nginx_proxy": 18083,  # nginx proxy_pass with upstream keepalive
    "haproxy": 18084,
    "herve_logged": 18087,  # a second Herve, its access log to a file
    "nginx_logged": 18088,  # nginx return 200, its access log (combined) to a file
}
ADMIN = ("bench", "bench-secret")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on port {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Admin:
    """The Herve admin API, over keep-alive connections."""

    def __init__(self, port):
        self.port = port
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def call(self, method, path, form=None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(self.headers)
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = json.loads(response.read() or b"{}")
        if own:
            conn.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data}")
        return data

    def register(self, name, type_name, conn=None, **fields):
        form = {"name": name, "type": type_name, **fields}
        return self.call("POST", "/services/register", form, conn)["data"]["uuid"]

    def start(self, uuid, conn=None):
        self.call("POST", f"/services/{uuid}/start", conn=conn)


def wrk(url, seconds, threads, connections, host=None, close=False):
    headers = ["-H", f"Host: {host}"] if host else []
    if close:
        headers += ["-H", "Connection: close"]
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", *headers, "-s", LUA, url],
        capture_output=True, text=True, check=True,
    ).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def alternate(contenders, args, close=False):
    """Runs every contender, alternating, `repeat` times each; returns their medians.

    A contender is (label, url) or (label, url, Host header); with `close`, every
    request comes on a new connection (and, over HTTPS, a new handshake)."""
    contenders = [(c[0], c[1], c[2] if len(c) > 2 else None) for c in contenders]
    results = {label: [] for label, _, _ in contenders}
    for round_ in range(args.repeat):
        for label, url, host in contenders:
            log(f"  round {round_ + 1}: {label}")
            results[label].append(wrk(url, args.seconds, 2, args.connections, host, close))
    summary = []
    for label, url, host in contenders:
        runs = results[label]
        progress = wrk(url, max(3, args.seconds // 2), args.connections, args.connections, host, close)
        per = progress["per_connection"]
        summary.append({
            "label": label,
            "rps": statistics.median(r["rps"] for r in runs),
            "p50_us": statistics.median(r["p50_us"] for r in runs),
            "p99_us": statistics.median(r["p99_us"] for r in runs),
            "max_us": max(r["max_us"] for r in runs),
            "errors": sum(r["errors"] for r in runs) + progress["errors"],
            "conn_min": min(per) if per else 0,
            "conn_max": max(per) if per else 0,
            "runs": [round(r["rps"]) for r in runs],
        })
    return summary


NGINX = """
worker_processes {workers};
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}.err;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {extra}
  server {{
    listen 127.0.0.1:{port}{listen} backlog=4096;
    {server}
    {location}
  }}
}}
"""

HAPROXY = """
global
  nbthread {threads}
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend bench
  bind 127.0.0.1:{port}
  default_backend upstream
backend upstream
  server up 127.0.0.1:{upstream}
"""


def start_nginx(workdir, name, port, workers, location, extra="", listen="", server=""):
    path = os.path.join(workdir, f"nginx-{name}.conf")
    with open(path, "w") as conf:
        conf.write(NGINX.format(workers=workers, dir=workdir, name=name, extra=extra, port=port,
                                location=location, listen=listen, server=server))
    subprocess.run(["nginx", "-c", path, "-e", os.path.join(workdir, f"nginx-{name}.err")], check=True)
    wait_tcp(port)
    return os.path.join(workdir, f"nginx-{name}.pid")


def wait_tcp(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


def make_certificate(workdir):
    """An ECDSA P-256 certificate for bench.test, for Herve and nginx alike."""
    cert, key = os.path.join(workdir, "tls-cert.pem"), os.path.join(workdir, "tls-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"],
                   check=True, capture_output=True)
    os.chmod(key, 0o644)
    return cert, key


def h2load(url, seconds, connections, streams, threads):
    """HTTP/2 load with h2load (nghttp2): req/s, mean latency, failures."""
    out = subprocess.run(
        ["h2load", "-D", str(seconds), "-c", str(connections), "-m", str(streams), "-t", str(threads), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = mean_us = 0.0
    failed = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            parts = line.replace(",", "").split()
            failed = int(parts[parts.index("failed") - 1]) + int(parts[parts.index("errored") - 1])
        elif line.startswith("time for request:"):
            mean_us = duration_us(line.split()[4])
    return {"rps": rps, "mean_us": mean_us, "failed": failed}


def duration_us(text):
    """`512us`, `1.20ms` or `2.1s` in microseconds."""
    for suffix, scale in (("us", 1), ("ms", 1000), ("s", 1_000_000)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return 0.0


def stop_pidfile(path):
    try:
        with open(path) as pidfile:
            os.kill(int(pidfile.read().strip()), signal.SIGQUIT)
    except (OSError, ValueError):
        pass


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def print_tables(args, threads, rows, ratios, memory):
    print()
    print(f"Herve vs peers on {threads} cores, wrk -t2 -c{args.connections} -d{args.seconds}s, "
          f"{args.repeat} alternating runs each (medians); conn min/max = requests completed by the "
          f"least and most served of {args.connections} connections in a run with one wrk thread per connection")
    print()
    print("| scenario | server | req/s | runs | p50 ms | p99 ms | max ms | errors | conn min/max |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    for name, r in rows:
        print(f"| {name} | {r['label']} | {r['rps']:,.0f} | {r['runs']} | {fmt_ms(r['p50_us'])} | "
              f"{fmt_ms(r['p99_us'])} | {fmt_ms(r['max_us'])} | {r['errors']} | {r['conn_min']}/{r['conn_max']} |")
    print()
    print("| scenario | ratio | req/s ratio | p99 Herve ms | p99 peer ms |")
    print("|---|---|---:|---:|---:|")
    for name, label, ratio, p99_h, p99_p in ratios:
        print(f"| {name} | {label} | {ratio:.2f} | {fmt_ms(p99_h)} | {fmt_ms(p99_p)} |")
    print()
    if memory:
        print("| Herve RSS | MiB |")
        print("|---|---:|")
        for label, kib in memory:
            print(f"| {label} | {kib / 1024:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each contender, alternating")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--services", type=int, default=10_000, help="registered services in scenario 4")
    parser.add_argument("--running", type=int, default=5_000,
                        help="running services in scenario 4, each with a host route (half of them wildcards)")
    parser.add_argument("--api-ops", type=int, default=2_000, help="lifecycle operations in scenario 5")
    parser.add_argument("--only", choices=["all", "core"], default="all",
                        help="core: /health, /health with access logs, ping and the proxy only")
    args = parser.parse_args()

    herve_bin = os.path.join(ROOT, "target", "release", "herve")
    workdir = tempfile.mkdtemp(prefix="herve-bench-")
    pidfiles, children = [], []
    rows, ratios, memory = [], [], []
    threads = os.cpu_count() or 2
    try:
        pidfiles.append(start_nginx(workdir, "plain", PORTS["nginx"], threads,
                                    'location / { return 200 "{\\"success\\":true,\\"message\\":\\"ok\\"}"; }'))
        pidfiles.append(start_nginx(workdir, "upstream", PORTS["upstream"], 1,
                                    'location / { return 200 "hello from the upstream\\n"; }'))
        pidfiles.append(start_nginx(
            workdir, "proxy", PORTS["nginx_proxy"], threads,
            "location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
            extra=f"upstream up {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 256; }}"))
        cert, key = make_certificate(workdir)
        pidfiles.append(start_nginx(
            workdir, "tls", PORTS["nginx_tls"], threads,
            'location / { return 200 "{\\"success\\":true,\\"message\\":\\"ok\\"}"; }',
            listen=" ssl http2",
            server=f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;"))
        haproxy_conf = os.path.join(workdir, "haproxy.cfg")
        with open(haproxy_conf, "w") as conf:
            conf.write(HAPROXY.format(threads=threads, port=PORTS["haproxy"], upstream=PORTS["upstream"]))
        children.append(subprocess.Popen(["haproxy", "-f", haproxy_conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(PORTS["haproxy"])

        pidfiles.append(start_nginx(workdir, "logged", PORTS["nginx_logged"], threads,
                                    'location / { return 200 "{\\"success\\":true,\\"message\\":\\"ok\\"}"; }',
                                    server=f"access_log {workdir}/nginx-access.log;"))
        env = dict(os.environ, PORT=str(PORTS["herve"]), HERVE_HOST="127.0.0.1",
                   HERVE_DATA_DIR=os.path.join(workdir, "herve-data"), AUTH_ADMIN_ID=ADMIN[0],
                   AUTH_ADMIN_SECRET=ADMIN[1], HERVE_ACCESS_LOG="false", HERVE_LOG="warn",
                   HERVE_MAX_SERVICES=str(max(args.services + 100, 10_000)),
                   HERVE_TLS_PORT=str(PORTS["herve_tls"]), HERVE_TLS_CERT=cert, HERVE_TLS_KEY=key)
        herve = subprocess.Popen([herve_bin], env=env, cwd=workdir, stdout=subprocess.DEVNULL)
        children.append(herve)
        wait_port(PORTS["herve"])
        logged_env = dict(env, PORT=str(PORTS["herve_logged"]),
                          HERVE_DATA_DIR=os.path.join(workdir, "herve-logged-data"),
                          HERVE_ACCESS_LOG=os.path.join(workdir, "herve-access.log"))
        del logged_env["HERVE_TLS_PORT"], logged_env["HERVE_TLS_CERT"], logged_env["HERVE_TLS_KEY"]
        children.append(subprocess.Popen([herve_bin], env=logged_env, cwd=workdir, stdout=subprocess.DEVNULL))
        wait_port(PORTS["herve_logged"])
        time.sleep(0.5)
        memory.append(("idle", rss_kib(herve.pid)))

        admin = Admin(PORTS["herve"])
        ping = admin.register("bench-ping", "ping")
        admin.start(ping)
        proxy = admin.register("bench-proxy", "proxy", upstream=f"http://127.0.0.1:{PORTS['upstream']}")
        admin.start(proxy)
        h = f"http://127.0.0.1:{PORTS['herve']}"

        def scenario(name, contenders, peers=True, close=False):
            """Runs contenders; with `peers`, the first is Herve and the others its peers."""
            log(f"scenario {name}")
            results = alternate(contenders, args, close)
            for result in results:
                rows.append((name, result))
            herve_result = results[0]
            for peer in results[1:] if peers else []:
                ratios.append((name, f"{herve_result['label']} / {peer['label']}",
                               herve_result["rps"] / peer["rps"], herve_result["p99_us"], peer["p99_us"]))
            memory.append((f"after {name}", rss_kib(herve.pid)))
            return results

        scenario("1 /health", [("herve /health", f"{h}/health"),
                               ("nginx return 200", f"http://127.0.0.1:{PORTS['nginx']}/health")])
        scenario("1b /health, access logs to files",
                 [("herve /health, logged", f"http://127.0.0.1:{PORTS['herve_logged']}/health"),
                  ("nginx return 200, logged", f"http://127.0.0.1:{PORTS['nginx_logged']}/health")])
        logged_lines = {name: sum(1 for _ in open(os.path.join(workdir, f"{name}-access.log"), "rb"))
                        for name in ("herve", "nginx")}
        scenario("2 ping", [("herve /<uuid>/ping", f"{h}/{ping}/ping"),
                            ("nginx return 200", f"http://127.0.0.1:{PORTS['nginx']}/ping")])
        three = scenario("3 proxy", [("herve proxy", f"{h}/{proxy}/x"),
                                     ("nginx proxy_pass", f"http://127.0.0.1:{PORTS['nginx_proxy']}/x"),
                                     ("haproxy", f"http://127.0.0.1:{PORTS['haproxy']}/x")])

        if args.only == "core":
            print_tables(args, threads, rows, ratios, memory)
            print(f"Access lines written during scenario 1b and before: {logged_lines}")
            return
        hs = f"https://127.0.0.1:{PORTS['herve_tls']}"
        ns = f"https://127.0.0.1:{PORTS['nginx_tls']}"
        scenario("7 https /health", [("herve https", f"{hs}/health"), ("nginx https", f"{ns}/health")])
        scenario("8 TLS handshake per request", [("herve https, new connection", f"{hs}/health"),
                                                 ("nginx https, new connection", f"{ns}/health")], close=True)
        log("scenario 9: HTTP/2 (h2load)")
        h2 = {"herve h2": [], "nginx h2": []}
        for _ in range(args.repeat):
            for label, base in (("herve h2", hs), ("nginx h2", ns)):
                h2[label].append(h2load(f"{base}/health", args.seconds, args.connections, 10, 2))
        h2_summary = {label: {"rps": statistics.median(r["rps"] for r in runs),
                              "mean_us": statistics.median(r["mean_us"] for r in runs),
                              "failed": sum(r["failed"] for r in runs),
                              "runs": [round(r["rps"]) for r in runs]} for label, runs in h2.items()}
        ratios.append(("9 http/2", "herve h2 / nginx h2",
                       h2_summary["herve h2"]["rps"] / h2_summary["nginx h2"]["rps"], 0, 0))
        memory.append(("after 9 http/2", rss_kib(herve.pid)))

        # The routing baseline: a host route (exact, then wildcard) while it is nearly alone.
        routed = admin.register("bench-routed", "ping", hosts="app.bench.test,*.wild.bench.test")
        admin.start(routed)
        exact = ("herve host route", f"{h}/ping", "app.bench.test")
        wildcard = ("herve wildcard route", f"{h}/ping", "x.wild.bench.test")
        alone = scenario("host routes, 4 services", [exact, wildcard], peers=False)

        log(f"scenario 4: registering {args.services} services, starting {args.running} with host routes")
        started = time.time()

        def register_batch(batch):
            conn = http.client.HTTPConnection("127.0.0.1", PORTS["herve"], timeout=60)
            for i in batch:
                if i < args.running:
                    host = f"*.filler-{i}.bench.test" if i % 2 else f"filler-{i}.bench.test"
                    uuid = admin.register(f"filler-{i}", "ping", conn=conn, hosts=host)
                    admin.start(uuid, conn=conn)
                else:
                    admin.register(f"filler-{i}", "ping", conn=conn)
            conn.close()

        batches = [range(start, min(start + 250, args.services)) for start in range(0, args.services, 250)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(register_batch, batches))
        log(f"  done in {time.time() - started:.1f}s")
        memory.append((f"{args.services} services registered", rss_kib(herve.pid)))
        four = scenario(f"4 proxy, {args.services} services", [("herve proxy", f"{h}/{proxy}/x")])
        ratios.append(("4 vs 3", "herve proxy, crowded / alone", four[0]["rps"] / three[0]["rps"],
                       four[0]["p99_us"], three[0]["p99_us"]))
        crowded = scenario(f"host routes, {args.services} services, {args.running} with hosts",
                           [exact, wildcard], peers=False)
        for before, after in zip(alone, crowded):
            ratios.append(("host routes", f"{before['label']}, crowded / alone", after["rps"] / before["rps"],
                           after["p99_us"], before["p99_us"]))

        log(f"scenario 5: {args.api_ops} register/start/stop/unregister cycles")
        latencies = []

        def cycle(i):
            conn = http.client.HTTPConnection("127.0.0.1", PORTS["herve"], timeout=60)
            taken = []
            for step in range(4):
                began = time.perf_counter()
                if step == 0:
                    uuid = admin.register(f"cycle-{i}", "echo", conn=conn)
                else:
                    op = ["start", "stop", "unregister"][step - 1]
                    admin.call("POST", f"/services/{uuid}/{op}", conn=conn)
                taken.append(time.perf_counter() - began)
            conn.close()
            return taken

        began = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            for taken in pool.map(cycle, range(args.api_ops // 4)):
                latencies.extend(taken)
        elapsed = time.time() - began
        latencies.sort()
        api = {
            "ops_per_s": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        }
        memory.append(("after 5 API", rss_kib(herve.pid)))

        print_tables(args, threads, rows, ratios, [])
        print(f"Scenario 9 (HTTP/2, h2load -c{args.connections} -m10 -t2 -D{args.seconds}, medians):")
        print()
        print("| server | req/s | runs | mean ms | failed |")
        print("|---|---:|---|---:|---:|")
        for label, r in h2_summary.items():
            print(f"| {label} | {r['rps']:,.0f} | {r['runs']} | {fmt_ms(r['mean_us'])} | {r['failed']} |")
        print()
        print(f"Scenario 5 (API, 16 clients): {api['ops_per_s']:,.0f} ops/s, p50 {api['p50_ms']:.2f} ms, "
              f"p99 {api['p99_ms']:.2f} ms")
        print()
        print("| Herve RSS | MiB |")
        print("|---|---:|")
        for label, kib in memory:
            print(f"| {label} | {kib / 1024:.1f} |")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        for pidfile in pidfiles:
            stop_pidfile(pidfile)
        time.sleep(0.5)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
