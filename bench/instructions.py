#!/usr/bin/env python3
"""Instructions per request, Herve and nginx, counted by valgrind's callgrind.

A figure noise cannot move: one worker each, one keep-alive connection, 2,000 requests
after a warm-up, the counters zeroed before and dumped after with callgrind_control.
Paths: `/health` (nginx: `return 200`), a ping service (nginx: `return 200`) and a proxy
service (nginx: `proxy_pass` with upstream keepalive), both to the same upstream (an
nginx outside valgrind). Needs valgrind and nginx; builds the release binary first with
`cargo build --release --locked`.

Usage: python3 bench/instructions.py [--requests 2000] [--warmup 300]
"""

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench import wait_tcp  # noqa: E402  (the benchmark's own helper)
ADMIN = ("bench", "bench-secret")
BODY = '{"success":true,"message":"ok"}'


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def requests(port, path, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"GET {path} on {port}: {response.status}")
    conn.close()


def count(pid, port, path, args, out_file):
    """Instructions per request of `path`, on one kept-alive connection."""
    requests(port, path, args.warmup)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    conn_requests = args.requests
    requests(port, path, conn_requests)
    before = set(os.listdir(os.path.dirname(out_file)))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    time.sleep(0.5)
    dumps = sorted(set(os.listdir(os.path.dirname(out_file))) - before)
    per_thread = []
    for dump in dumps:
        with open(os.path.join(os.path.dirname(out_file), dump)) as data:
            for line in data:
                found = re.match(r"(?:summary|totals):\s+(\d+)", line)
                if found:
                    per_thread.append(int(found.group(1)))
                    break
    # One dump per thread, counted since the zeroing: the thread that served the
    # connection is the busiest; the others (timers, the memory upkeep) are not the
    # request's.
    return max(per_thread) / conn_requests


def admin_call(port, method, path, form=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    body = None
    if form:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read() or b"{}")
    conn.close()
    return data


NGINX = """
worker_processes 1;
daemon off;
master_process {master};
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}.err;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {extra}
  server {{
    listen 127.0.0.1:{port};
    {location}
  }}
}}
"""


def nginx_conf(workdir, name, port, location, extra="", master="off"):
    path = os.path.join(workdir, f"nginx-{name}.conf")
    with open(path, "w") as conf:
        conf.write(NGINX.format(dir=workdir, name=name, port=port, location=location, extra=extra,
                                master=master))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--herve", help="a herve binary to measure instead of this tree's release build")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install valgrind nginx)")
    herve_bin = args.herve
    if herve_bin is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
        herve_bin = os.path.join(ROOT, "target", "release", "herve")
    workdir = tempfile.mkdtemp(prefix="herve-instructions-")
    children = []
    results = {}
    try:
        upstream = free_port()
        children.append(subprocess.Popen(
            ["nginx", "-c", nginx_conf(workdir, "upstream", upstream,
                                       'location / { return 200 "hello from the upstream\\n"; }')],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_tcp(upstream)

        herve_port = free_port()
        out_file = os.path.join(workdir, "herve", "callgrind.out")
        os.makedirs(os.path.dirname(out_file))
        env = dict(os.environ, PORT=str(herve_port), HERVE_HOST="127.0.0.1", HERVE_WORKERS="1",
                   HERVE_DATA_DIR=os.path.join(workdir, "herve-data"), AUTH_ADMIN_ID=ADMIN[0],
                   AUTH_ADMIN_SECRET=ADMIN[1], HERVE_ACCESS_LOG="false", HERVE_LOG="warn")
        herve = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                                  f"--callgrind-out-file={out_file}", herve_bin], env=env, cwd=workdir,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(herve)
        wait_tcp(herve_port, timeout=120)
        ping = admin_call(herve_port, "POST", "/services/register", {"name": "ping", "type": "ping"})["data"]["uuid"]
        admin_call(herve_port, "POST", f"/services/{ping}/start")
        proxy = admin_call(herve_port, "POST", "/services/register",
                           {"name": "proxy", "type": "proxy", "upstream": f"http://127.0.0.1:{upstream}"})["data"]["uuid"]
        admin_call(herve_port, "POST", f"/services/{proxy}/start")
        for label, path in (("/health", "/health"), ("ping", f"/{ping}/ping"), ("proxy", f"/{proxy}/x")):
            results.setdefault(label, {})["herve"] = count(herve.pid, herve_port, path, args, out_file)

        nginx_port = free_port()
        out_file = os.path.join(workdir, "nginx", "callgrind.out")
        os.makedirs(os.path.dirname(out_file))
        conf = nginx_conf(
            workdir, "measured", nginx_port,
            f'location /x {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}\n'
            f'    location / {{ return 200 \'{BODY}\'; }}',
            extra=f"upstream up {{ server 127.0.0.1:{upstream}; keepalive 16; }}")
        nginx = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                                  f"--callgrind-out-file={out_file}", "nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(nginx)
        wait_tcp(nginx_port, timeout=120)
        for label, path in (("/health", "/health"), ("ping", "/ping"), ("proxy", "/x")):
            results[label]["nginx"] = count(nginx.pid, nginx_port, path, args, out_file)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"User-space instructions per request (valgrind --tool=callgrind, one worker each, one "
          f"kept-alive connection, {args.requests} requests after {args.warmup}; the serving thread):")
    print()
    print("| path | Herve | nginx | Herve / nginx |")
    print("|---|---:|---:|---:|")
    for label, counts in results.items():
        print(f"| {label} | {counts['herve']:,.0f} | {counts['nginx']:,.0f} | "
              f"{counts['herve'] / counts['nginx']:.2f} |")


if __name__ == "__main__":
    main()
