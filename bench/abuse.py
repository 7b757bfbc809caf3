"""Benchmark: the hardening issue's attacks against the API, before and after, in the same run.

Each attack runs against a fresh `python -m api` (uvicorn) of a source tree, on its own redis-server and
moto S3: the tree at `--before` (a git revision, checked out into a temporary worktree; default: the commit
before the hardening work) and this checkout. While it runs, `/healthz` is polled every 50 ms (latency
p50/max: does the server still answer?) and the API process's RSS is sampled (peak over its start).
The attacks are scaled down from the issue's figures so that a run takes minutes; the sizes are reported.

    python -m bench.abuse [--before 80032b0]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench.harness import report
from scripts.processes import free_port, start_moto, start_redis, stop_group

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def start_api(tree: Path, env: dict, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{env['STILLMOVING_API_PORT']}/healthz"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(log.read_text()[-3000:])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch(threading.Thread):
    """Polls /healthz (latency) and samples the API's RSS until stopped."""

    def __init__(self, port: int, pid: int):
        super().__init__(daemon=True)
        self.port, self.pid, self.latencies, self.peak, self.failures = port, pid, [], rss_mib(pid), 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=30)
                self.latencies.append((time.monotonic() - start) * 1000)
            except OSError:
                self.failures += 1
            self.peak = max(self.peak, rss_mib(self.pid))
            self.stop.wait(0.05)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=120)


def _answer(sock: socket.socket) -> int | None:
    try:
        head = sock.recv(4096)
        return int(head.split()[1]) if head else None
    except (OSError, IndexError, ValueError):
        return None


def huge_json_without_key(port: int, mib: int = 300) -> dict:
    sock = _connect(port)
    sock.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {mib * 2**20 + 2}\r\n\r\n".encode())
    chunk = b" " * 2**20
    sent = 0
    try:
        sock.sendall(b"[")
        for _ in range(mib):
            sock.sendall(chunk)
            sent += 1
        sock.sendall(b"]")
    except OSError:
        pass  # the server answered and closed before the body was through
    status = _answer(sock)
    sock.close()
    return {"attack": f"{mib} MiB JSON body, no key", "status": status, "body_mib_sent": sent}


def huge_header(port: int, mib: int = 20) -> dict:
    sock = _connect(port)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (mib * 2**20) + b"\r\n\r\n")
    except OSError:
        pass
    status = _answer(sock)
    sock.close()
    return {"attack": f"{mib} MiB request header", "status": status}


def _drip(socks: list[socket.socket], data: bytes, every: float, seconds: float) -> None:
    """Send `data` on each socket every `every` s for `seconds` (a slow client's pace)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in socks:
            try:
                sock.sendall(data)
            except OSError:
                pass
        time.sleep(every)


def dripped_heads(port: int, connections: int = 45, seconds: float = 15.0) -> dict:
    socks = []
    for _ in range(connections):
        sock = _connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    _drip(socks, b"X-Drip: 1\r\n", every=5, seconds=seconds)
    open_ = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            open_ += sock.recv(1) != b""  # data (an answer) or nothing yet
        except BlockingIOError:
            open_ += 1
        except OSError:
            pass
        sock.close()
    return {"attack": f"{connections} connections dripping a header line every 5 s for {seconds:g} s",
            "still_open": open_}


def dripped_uploads(port: int, uploads: int = 40, seconds: float = 10.0) -> dict:
    socks = []
    for _ in range(uploads):
        sock = _connect(port)
        sock.sendall(f"POST /customizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n".encode())
        socks.append(sock)
    _drip(socks, b"-", every=1, seconds=seconds)
    for sock in socks:
        sock.close()
    return {"attack": f"{uploads} uploads dripping a byte a second for {seconds:g} s"}


def many_value_header(port: int) -> dict:
    values = 4_000_000  # the 8 million within its 16 MiB header limit: "1," is 2 bytes
    header = json.dumps({"x": {"dtype": "F32", "shape": [1] * values, "data_offsets": [0, 4]}}).encode()
    body = struct.pack("<Q", len(header)) + header + b"\x00" * 4
    form = (b"--b\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n{\"prompts\": [\"x\"]}\r\n--b\r\n"
            b"Content-Disposition: form-data; name=\"checkpoint\"; filename=\"x.safetensors\"\r\n\r\n" + body +
            b"\r\n--b--\r\n")
    sock = _connect(port)
    sock.sendall(f"POST /customizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                 f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(form)}\r\n\r\n".encode() + form)
    status = _answer(sock)
    sock.close()
    return {"attack": f"checkpoint header of {values:,} values ({len(header) / 2**20:.1f} MiB)", "status": status}


ATTACKS = [huge_json_without_key, huge_header, many_value_header, dripped_heads, dripped_uploads]


def run_tree(label: str, tree: Path, work: Path) -> list[dict]:
    rows = []
    for attack in ATTACKS:
        with ExitStack() as stack:
            redis_port, s3_port, api_port = free_port(), free_port(), free_port()
            (work / f"{label}-{attack.__name__}").mkdir()
            redis = start_redis(redis_port, work / f"{label}-{attack.__name__}")
            stack.callback(stop_group, redis)
            moto = start_moto(s3_port, work / f"{label}-{attack.__name__}" / "moto.log")
            stack.callback(stop_group, moto)
            env = {**os.environ, "STILLMOVING_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                   "STILLMOVING_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "STILLMOVING_S3_BUCKET": "abuse",
                   "STILLMOVING_S3_ACCESS_KEY_ID": "x", "STILLMOVING_S3_SECRET_ACCESS_KEY": "x",
                   "STILLMOVING_API_KEYS": KEY, "STILLMOVING_API_PORT": str(api_port),
                   "STILLMOVING_MODEL_PRESET": "tiny"}
            api = start_api(tree, env, work / f"{label}-{attack.__name__}" / "api.log")
            stack.callback(stop_group, api)
            time.sleep(0.5)
            watch = Watch(api_port, api.pid)
            start_rss = rss_mib(api.pid)
            watch.start()
            start = time.monotonic()
            row = attack(api_port)
            row["seconds"] = round(time.monotonic() - start, 2)
            time.sleep(0.5)
            watch.stop.set()
            watch.join()
            lat = watch.latencies or [float("nan")]
            rows.append({"tree": label, **row, "healthz_p50_ms": round(statistics.median(lat), 1),
                         "healthz_max_ms": round(max(lat), 1), "healthz_failed": watch.failures,
                         "rss_start_mib": round(start_rss), "rss_peak_mib": round(watch.peak)})
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="80032b0", help="git revision of the 'before' tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = work / "before-tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = run_tree("before", before, work) + run_tree("after", ROOT, work)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    report("abuse", rows, {"before": args.before})


if __name__ == "__main__":
    main()
