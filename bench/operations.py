#!/usr/bin/env python3
"""Operations benchmark: how long `herve apply` takes for many services (and a no-op
apply of the same file), how long a rolling reload takes, and how many requests fail
while a service is reloaded under load. Prints one table.

Usage: cargo build --release && python3 bench/operations.py [--services 200] [--reloads 10]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERVE = os.path.join(os.path.dirname(__file__), "..", "target", "release", "herve")

APP = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env, *args):
    started = time.perf_counter()
    done = subprocess.run([HERVE, *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"herve {' '.join(args)} failed: {done.stderr}\n{done.stdout[-2000:]}")
    return took, done.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=4)
    options = parser.parse_args()

    work = tempfile.mkdtemp(prefix="herve-ops-")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "HERVE_HOST": "127.0.0.1",
        "HERVE_DATA_DIR": os.path.join(work, "data"),
        "HERVE_ACCESS_LOG": "false",
        "HERVE_LOG": "warn",
        "AUTH_ADMIN_ID": "admin",
        "AUTH_ADMIN_SECRET": "bench-secret",
    }
    server = subprocess.Popen([HERVE], env=env, cwd=work, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    rows = []
    try:
        app = os.path.join(work, "app.py")
        with open(app, "w") as f:
            f.write(APP)
        # As root, Herve runs programs as `nobody`: the script must be readable.
        os.chmod(work, 0o755)
        os.chmod(app, 0o644)
        with open(os.path.join(work, "herve.toml"), "w") as f:
            for i in range(options.services):
                f.write(f'[[service]]\nname = "svc-{i}"\ntype = "echo"\npath = "/p{i}"\n\n')
            f.write(
                f'[[service]]\nname = "web"\ntype = "process"\n'
                f'command = "python3 {app}"\nreplicas = {options.replicas}\n'
            )
        file = os.path.join(work, "herve.toml")
        took, _ = cli(env, "apply", "-f", file)
        rows.append((f"apply: create and start {options.services} echo + 1 process x{options.replicas}", took))
        took, out = cli(env, "apply", "-f", file)
        assert "No changes" in out, out
        rows.append(("apply the same file again (no change)", took))
        took, _ = cli(env, "diff", "-f", file)
        rows.append(("diff of the same file", took))
        took, _ = cli(env, "export")
        rows.append((f"export {options.services + 1} services", took))

        failures = []
        served = [0]
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(base + "/web/", timeout=5) as reply:
                        reply.read()
                        served[0] += 1
                except Exception as error:  # noqa: BLE001 - every failure counts
                    failures.append(str(error))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        reloads = []
        for _ in range(options.reloads):
            took, _ = cli(env, "reload", "web")
            reloads.append(took)
        stop.set()
        for thread in threads:
            thread.join()
        reloads.sort()
        rows.append((f"rolling reload of {options.replicas} copies (median of {options.reloads})", reloads[len(reloads) // 2]))
        rows.append((f"requests served during the reloads (4 clients)", served[0]))
        rows.append(("requests failed during the reloads", len(failures)))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"| {'measure':<60} | {'value':>10} |")
    print(f"|{'-' * 62}|{'-' * 12}:|")
    for name, value in rows:
        shown = f"{value * 1000:.0f} ms" if isinstance(value, float) else str(value)
        print(f"| {name:<60} | {shown:>10} |")


if __name__ == "__main__":
    main()
