#!/usr/bin/env python3
"""Soak and fault runs against the release build of Herve, on loopback.

  python3 bench/soak.py [--minutes 10] [--idle 10000] [--slow 1000] [--kills 20]

1. Mixed load for --minutes: /health, echo with random bodies, a proxy service, and API
   changes, all at once. Reports errors, RSS growth after warm-up, fd growth.
2. --idle idle connections held open while wrk hits /health.
3. --slow slowloris connections (a header byte a second) while wrk hits /health.
4. --kills SIGKILLs of Herve at random moments during a stream of API changes; after
   each restart, every acknowledged change must be there and nothing half-applied.
5. attacks, each with Herve's RSS before, during (peak) and after, and /health latency
   during: a login flood (wrk -c64 -d30s on an auth service's /login, made-up names), slow
   request bodies filling every data-plane connection (HERVE_MAX_CONNECTIONS=200), and
   slow readers of a models listing and of a large static file.
Every load is bounded in time and count. Exits non-zero if a check fails.
"""

import argparse
import base64
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HERVE = os.path.join(ROOT, "target", "release", "herve")
PORT = 18090
UPSTREAM_PORT = 18091
ADMIN = ("soak", "soak-secret")
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()}
failures = []


def log(*args):
    print(*args, flush=True)


def check(ok, what):
    log(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        failures.append(what)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_herve(data_dir, **extra):
    env = dict(os.environ, PORT=str(PORT), HERVE_HOST="127.0.0.1", HERVE_DATA_DIR=data_dir,
               AUTH_ADMIN_ID=ADMIN[0], AUTH_ADMIN_SECRET=ADMIN[1], HERVE_ACCESS_LOG="false",
               HERVE_LOG="warn", **extra)
    process = subprocess.Popen([HERVE], env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            status, _ = call("GET", "/health")
            if status == 200:
                return process
        except OSError:
            time.sleep(0.05)
    raise SystemExit("herve did not start")


def call(method, path, form=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    headers = dict(AUTH)
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data[:1] == b"{" else data)
    finally:
        conn.close()


def wrk(url, seconds, connections=16, script=None):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
    if script:
        command += ["-s", script]
    out = subprocess.run(command + [url], capture_output=True, text=True).stdout
    result = {"rps": 0.0, "errors": 0, "non2xx": 0, "p99": "?"}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        elif line.startswith("Socket errors:"):
            result["errors"] += sum(int(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
        elif line.startswith("Non-2xx"):
            result["non2xx"] += int(line.split()[-1])
        elif line.startswith("99%"):
            result["p99"] = line.split()[1]
    return result


def upstream_server():
    """A small threaded HTTP upstream for the proxy service."""
    code = ("import http.server,sys\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    protocol_version='HTTP/1.1'\n"
            "    def do_GET(self):\n"
            "        self.wfile.write(b'HTTP/1.1 200 OK\\r\\ncontent-length: 12\\r\\n\\r\\nupstream ok\\n')\n"
            "    def log_message(self,*a): pass\n"
            f"http.server.ThreadingHTTPServer(('127.0.0.1',{UPSTREAM_PORT}),H).serve_forever()\n")
    return subprocess.Popen([sys.executable, "-c", code])


ECHO_LUA = """
math.randomseed(os.time())
request = function()
  local n = math.random(0, 4096)
  return wrk.format("POST", nil, {["Content-Type"] = "application/octet-stream"}, string.rep("x", n))
end
"""


def mixed_load(minutes, workdir):
    log(f"1. mixed load for {minutes} min")
    herve = start_herve(os.path.join(workdir, "mixed"))
    upstream = upstream_server()
    time.sleep(0.5)
    try:
        _, echo = call("POST", "/services/register", {"name": "echo", "type": "echo"})
        echo = echo["data"]["uuid"]
        call("POST", f"/services/{echo}/start")
        _, proxy = call("POST", "/services/register",
                        {"name": "proxy", "type": "proxy", "upstream": f"http://127.0.0.1:{UPSTREAM_PORT}"})
        proxy = proxy["data"]["uuid"]
        call("POST", f"/services/{proxy}/start")
        lua = os.path.join(workdir, "echo.lua")
        with open(lua, "w") as script:
            script.write(ECHO_LUA)

        seconds = int(minutes * 60)
        stop = threading.Event()
        api_errors, api_ops = [], [0]

        def churn():
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    status, body = call("POST", "/services/register", {"name": f"churn-{i}", "type": "ping"})
                    if status != 201:
                        api_errors.append(f"register {status}")
                        continue
                    uuid = body["data"]["uuid"]
                    for op in ("start", "stop", "unregister"):
                        status, _ = call("POST", f"/services/{uuid}/{op}")
                        if status != 200:
                            api_errors.append(f"{op} {status}")
                    api_ops[0] += 4
                except OSError as error:
                    api_errors.append(str(error))

        samples = []

        def sample():
            while not stop.is_set():
                samples.append((time.time(), rss_kib(herve.pid), fds(herve.pid)))
                stop.wait(5)

        threads = [threading.Thread(target=churn), threading.Thread(target=sample)]
        for thread in threads:
            thread.start()
        results = {}

        def run(name, *wrk_args, **wrk_kwargs):
            results[name] = wrk(*wrk_args, **wrk_kwargs)

        loads = [
            threading.Thread(target=run, args=("health", f"http://127.0.0.1:{PORT}/health", seconds, 8)),
            threading.Thread(target=run, args=("echo", f"http://127.0.0.1:{PORT}/{echo}/echo", seconds, 8),
                             kwargs={"script": lua}),
            threading.Thread(target=run, args=("proxy", f"http://127.0.0.1:{PORT}/{proxy}/x", seconds, 8)),
        ]
        for load in loads:
            load.start()
        for load in loads:
            load.join()
        stop.set()
        for thread in threads:
            thread.join()
        for name, result in results.items():
            check(result["errors"] == 0 and result["non2xx"] == 0,
                  f"{name}: {result['rps']:.0f} req/s, p99 {result['p99']}, "
                  f"{result['errors']} socket errors, {result['non2xx']} non-2xx")
        check(not api_errors, f"API churn: {api_ops[0]} operations, {len(api_errors)} errors {api_errors[:3]}")
        warm = [s for s in samples if s[0] >= samples[0][0] + seconds * 0.2] or samples
        growth = (warm[-1][1] - warm[0][1]) / max(warm[0][1], 1) * 100
        check(growth < 5, f"RSS after warm-up {warm[0][1] / 1024:.1f} -> {warm[-1][1] / 1024:.1f} MiB ({growth:+.1f}%)")
        idle_fds = fds(herve.pid)
        check(idle_fds <= samples[0][2] + 8, f"fds at start {samples[0][2]}, at the end (idle) {idle_fds}")
    finally:
        herve.terminate()
        herve.wait(timeout=60)
        upstream.kill()


def idle_connections(count, workdir):
    log(f"2. {count} idle connections while /health is loaded")
    herve = start_herve(os.path.join(workdir, "idle"), HERVE_MAX_CONNECTIONS=str(count + 1000),
                        HERVE_MAX_CONNECTIONS_PER_IP=str(count + 1000))
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", PORT))
            sockets.append(sock)
        time.sleep(0.5)
        result = wrk(f"http://127.0.0.1:{PORT}/health", 8, 16)
        check(result["errors"] == 0 and result["rps"] > 1000,
              f"/health with {len(sockets)} idle connections: {result['rps']:.0f} req/s, p99 {result['p99']}, "
              f"{result['errors']} errors; Herve RSS {rss_kib(herve.pid) / 1024:.1f} MiB")
    finally:
        for sock in sockets:
            sock.close()
        herve.terminate()
        herve.wait(timeout=60)


def slowloris(count, workdir):
    log(f"3. slowloris: {count} connections sending a header byte a second")
    herve = start_herve(os.path.join(workdir, "slow"), HERVE_HEADER_TIMEOUT_S="5")
    stop = threading.Event()
    cut = [0]

    def drip():
        sockets = []
        opened = []
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", PORT))
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                sockets.append(sock)
                opened.append(time.time())
            except OSError:
                break
        while not stop.is_set() and sockets:
            alive = []
            for sock in sockets:
                try:
                    sock.sendall(b"X")
                    alive.append(sock)
                except OSError:
                    cut[0] += 1
                    sock.close()
            sockets = alive
            stop.wait(1)
        # What the loop above had no time to notice (it shares the CPU with wrk and
        # Herve, and may have opened its last connections late): once the youngest is
        # past the header timeout, a connection Herve cut reads as closed.
        time.sleep(max(0.0, opened[-1] + 6.5 - time.time()) if opened else 0.0)
        for sock in sockets:
            try:
                sock.setblocking(False)
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    cut[0] += 1
            except BlockingIOError:
                pass
            except OSError:
                cut[0] += 1
            sock.close()

    dripper = threading.Thread(target=drip)
    try:
        dripper.start()
        time.sleep(1)
        result = wrk(f"http://127.0.0.1:{PORT}/health", 10, 16)
        stop.set()
        dripper.join()
        check(result["errors"] == 0 and result["rps"] > 1000,
              f"/health during slowloris: {result['rps']:.0f} req/s, p99 {result['p99']}, {result['errors']} errors")
        check(cut[0] > count * 0.9, f"slow connections cut off by the header timeout: {cut[0]} of {count}")
    finally:
        stop.set()
        herve.terminate()
        herve.wait(timeout=60)


def kills(rounds, workdir):
    log(f"4. {rounds} SIGKILLs during a stream of acknowledged API changes")
    data_dir = os.path.join(workdir, "kills")
    expected = {}  # uuid -> status, per acknowledged changes
    in_flight = {}  # uuid -> the status its unacknowledged change would give
    registering = [False]  # a registration was unacknowledged when Herve died
    lost = 0
    for round_ in range(rounds):
        herve = start_herve(data_dir)
        # Everything acknowledged before must be there, exactly.
        status, listing = call("GET", "/services")
        present = {s["uuid"]: s["status"] for s in listing["data"]}
        for uuid, want in expected.items():
            got = present.get(uuid, "gone")
            pending = in_flight.get(uuid)
            if got != want and not (pending is not None and got == pending):
                lost += 1
                log(f"    round {round_}: {uuid} is {got}, acknowledged {want}")
        unknown = [u for u in present if u not in expected and u not in in_flight]
        if len(unknown) > (1 if registering[0] else 0):
            lost += len(unknown)
            log(f"    round {round_}: services nobody registered: {unknown}")
        expected = {u: present[u] for u in present}
        in_flight = {}
        registering[0] = False
        stop = threading.Event()

        def changes():
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    action = random.random()
                    uuids = list(expected)
                    if action < 0.4 or not uuids:
                        registering[0] = True
                        status, body = call("POST", "/services/register",
                                            {"name": f"k{round_}-{i}", "type": random.choice(["ping", "echo"])})
                        if status == 201:
                            expected[body["data"]["uuid"]] = "registered"
                        registering[0] = False
                        continue
                    uuid = random.choice(uuids)
                    op = random.choice(["start", "stop", "unregister"])
                    want = {"start": "running", "stop": "stopped" if expected[uuid] != "registered" else "registered",
                            "unregister": "gone"}[op]
                    in_flight[uuid] = want
                    status, _ = call("POST", f"/services/{uuid}/{op}")
                    if status == 200:
                        if want == "gone":
                            expected.pop(uuid, None)
                        else:
                            expected[uuid] = want
                    in_flight.pop(uuid, None)
                except (OSError, http.client.HTTPException):
                    return

        worker = threading.Thread(target=changes)
        worker.start()
        time.sleep(random.uniform(0.2, 1.2))
        herve.send_signal(signal.SIGKILL)
        herve.wait()
        stop.set()
        worker.join()
    herve = start_herve(data_dir)
    status, listing = call("GET", "/services")
    herve.terminate()
    herve.wait(timeout=60)
    check(lost == 0, f"{rounds} kills: {len(listing['data'])} services at the end, {lost} acknowledged changes lost or half-applied")


class Watch:
    """Samples Herve's RSS and /health latency (on new connections) in the background."""

    def __init__(self, pid):
        self.pid, self.rss, self.health, self.failed = pid, [], [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.rss.append(rss_kib(self.pid))
            started = time.time()
            try:
                status, _ = call("GET", "/health", timeout=5)
                if status == 200:
                    self.health.append((time.time() - started) * 1000)
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
            self.stop.wait(0.1)

    def done(self):
        self.stop.set()
        self.thread.join()
        ordered = sorted(self.health) or [0.0]
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        return {"peak_mib": max(self.rss or [0]) / 1024, "p50": pick(0.5), "p99": pick(0.99),
                "max": ordered[-1], "ok": len(self.health), "failed": self.failed}


def settle_rss(pid, seconds=12):
    """RSS once Herve has had time to give back what a burst took."""
    time.sleep(seconds)
    return rss_kib(pid) / 1024


def attack_report(name, before, watched, after):
    log(f"    {name}: RSS {before:.1f} -> peak {watched['peak_mib']:.1f} -> after {after:.1f} MiB; "
        f"/health during: p50 {watched['p50']:.1f} ms, p99 {watched['p99']:.1f} ms, max {watched['max']:.1f} ms, "
        f"{watched['ok']} ok, {watched['failed']} failed")


def attacks(workdir):
    log("5. attacks by clients without credentials")
    # a. A login flood.
    herve = start_herve(os.path.join(workdir, "flood"))
    try:
        status, body = call("POST", "/services/register", {"name": "accounts", "type": "auth"})
        uuid = body["data"]["uuid"]
        call("POST", f"/services/{uuid}/start")
        script = os.path.join(workdir, "login.lua")
        with open(script, "w") as out:
            out.write('counter = 0\n'
                      'request = function()\n'
                      '  counter = counter + 1\n'
                      '  local body = "username=flood" .. counter .. "&password=wrong-password"\n'
                      f'  return wrk.format("POST", "/{uuid}/login", '
                      '{["Content-Type"]="application/x-www-form-urlencoded"}, body)\n'
                      'end\n')
        before = rss_kib(herve.pid) / 1024
        watch = Watch(herve.pid)
        result = wrk(f"http://127.0.0.1:{PORT}/{uuid}/login", 30, 64, script)
        watched = watch.done()
        after = settle_rss(herve.pid)
        attack_report(f"login flood ({result['rps']:.0f} answers/s, {result['non2xx']} non-2xx: 401 and 503)",
                      before, watched, after)
        check(watched["peak_mib"] < 100, f"login flood: peak RSS {watched['peak_mib']:.1f} MiB < 100 MiB")
        check(watched["failed"] == 0, "login flood: /health always answered")
    finally:
        herve.terminate()
        herve.wait(timeout=60)

    # b. Slow bodies at the connection cap.
    herve = start_herve(os.path.join(workdir, "bodies"), HERVE_MAX_CONNECTIONS="200",
                        HERVE_MIN_BODY_RATE_GRACE_S="10")
    try:
        status, body = call("POST", "/services/register", {"name": "echo", "type": "echo"})
        echo = body["data"]["uuid"]
        call("POST", f"/services/{echo}/start")
        before = rss_kib(herve.pid) / 1024
        cut = [0]
        stop = threading.Event()

        def trickle():
            try:
                sock = socket.create_connection(("127.0.0.1", PORT))
                sock.sendall(f"POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode())
                sock.settimeout(0.2)
                while not stop.is_set():
                    sock.sendall(b"x")
                    try:
                        answer = sock.recv(100)
                        if answer.startswith(b"HTTP/1.1 408") or not answer:
                            cut[0] += 1
                            return
                    except socket.timeout:
                        pass
            except OSError:
                cut[0] += 1

        threads = [threading.Thread(target=trickle) for _ in range(200)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        watch = Watch(herve.pid)
        admin_ok = call("GET", "/services")[0] == 200
        time.sleep(14)
        watched = watch.done()
        stop.set()
        for thread in threads:
            thread.join()
        after = settle_rss(herve.pid)
        attack_report(f"200 slow bodies at HERVE_MAX_CONNECTIONS=200 ({cut[0]} cut, 408)", before, watched, after)
        check(admin_ok and watched["failed"] == 0, "slow bodies: /health and the admin API reachable while full")
        check(cut[0] >= 190, f"slow bodies: {cut[0]} of 200 cut by the minimum rate")
    finally:
        herve.terminate()
        herve.wait(timeout=60)

    # c. Slow readers of a models listing and of a large file.
    site = os.path.join(workdir, "site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "big.bin"), "wb") as out:
        out.write(os.urandom(1024 * 1024) * 50)
    herve = start_herve(os.path.join(workdir, "readers"), HERVE_SEND_TIMEOUT_S="20",
                        HERVE_MAX_CONNECTIONS_PER_IP="5000")
    readers = []
    try:
        status, body = call("POST", "/services/register",
                            {"name": "notes", "type": "models", "model": "note", "fields": "text:string:20000"})
        notes = body["data"]["uuid"]
        call("POST", f"/services/{notes}/start")
        text = "n" * 16000
        for _ in range(300):
            call("POST", f"/{notes}/note", {"text": text})
        status, body = call("POST", "/services/register", {"name": "files", "type": "static", "root": site})
        files = body["data"]["uuid"]
        call("POST", f"/services/{files}/start")
        before = rss_kib(herve.pid) / 1024
        watch = Watch(herve.pid)
        for i in range(600):
            path = [f"/{notes}/note?limit=300", f"/{files}/big.bin"][i % 2]
            sock = socket.create_connection(("127.0.0.1", PORT))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.recv(512)
            readers.append(sock)
        time.sleep(5)
        watched = watch.done()
        for sock in readers:
            sock.close()
        readers = []
        after = settle_rss(herve.pid)
        attack_report("600 stalled readers (300 of a 5 MB models page, 300 of a 50 MB file)", before, watched, after)
        check(watched["peak_mib"] - before < 150, f"slow readers: {watched['peak_mib'] - before:.1f} MiB held by 600 readers")
        check(after - before < 10, f"slow readers: {after - before:.1f} MiB kept after they left")
        check(watched["failed"] == 0, "slow readers: /health always answered")
    finally:
        for sock in readers:
            sock.close()
        herve.terminate()
        herve.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--slow", type=int, default=1_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--phases", default="mixed,idle,slow,kills,attacks",
                        help="which of mixed,idle,slow,kills,attacks to run")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    with tempfile.TemporaryDirectory(prefix="herve-soak-") as workdir:
        if "mixed" in phases:
            mixed_load(args.minutes, workdir)
        if "idle" in phases:
            idle_connections(args.idle, workdir)
        if "slow" in phases:
            slowloris(args.slow, workdir)
        if "kills" in phases:
            kills(args.kills, workdir)
        if "attacks" in phases:
            attacks(workdir)
    log("all checks passed" if not failures else f"{len(failures)} checks failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
