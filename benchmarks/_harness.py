"""Shared pieces of the benchmarks: processes on loopback, nginx, wrk, a sequential HTTP client, RSS, tables.

Not a test helper and not part of the package: the benchmark scripts put this directory on
``sys.path`` and import it. Every server it starts listens on 127.0.0.1 only and is stopped
(its whole process group) when the benchmark ends, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


class BenchError(RuntimeError):
    """A benchmark step that cannot go on (a server did not start, a tool is missing)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise BenchError(f"{name} is not installed; {hint}")
    return path


# ------------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    """A server subprocess in its own process group, with its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def start(name: str, argv: Sequence[str], *, workdir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    log = workdir / f"{name}.log"
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or workdir,
                             start_new_session=True)
    fh.close()
    return Proc(name, popen, log)


def wait_http(proc: Proc, port: int, *, path: str = "/", timeout: float = 60.0, expect_any: bool = True) -> None:
    """Wait until something answers HTTP on ``port`` (any status), or raise with the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode} before listening:\n{proc.tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(16).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{proc.name} did not answer on port {port} within {timeout:.0f}s:\n{proc.tail()}")


def wait_log(proc: Proc, text: str, count: int, *, timeout: float = 120.0) -> None:
    """Wait until ``text`` appears ``count`` times in the server's log (e.g. one startup line per worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(OSError):
            if proc.log.read_text(errors="replace").count(text) >= count:
                return
        time.sleep(0.5)
    raise BenchError(f"{proc.name}: fewer than {count} x {text!r} within {timeout:.0f}s:\n{proc.tail()}")


class Servers:
    """Every process a benchmark started; stops them all in reverse order."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        self.procs.clear()


# ------------------------------------------------------------------------------------------ nginx


def nginx_conf(workdir: Path, servers: str, *, workers: int) -> Path:
    """A self-contained nginx config (foreground, everything under ``workdir``) around ``servers``."""
    conf = workdir / "nginx.conf"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
    # As root, nginx workers would drop to "nobody" and could not read the benchmark's private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
daemon off;
{user}
master_process on;
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {workdir}/nginx-tmp/client_body;
    proxy_temp_path {workdir}/nginx-tmp/proxy;
    fastcgi_temp_path {workdir}/nginx-tmp/fastcgi;
    uwsgi_temp_path {workdir}/nginx-tmp/uwsgi;
    scgi_temp_path {workdir}/nginx-tmp/scgi;
    types {{ application/json json; application/octet-stream bin safetensors; }}
{servers}
}}
""")
    return conf


def start_nginx(name: str, workdir: Path, servers: str, *, workers: int, probe_port: int) -> Proc:
    nginx = require_tool("nginx", "install it with `apt-get install -y nginx`")
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    conf = nginx_conf(wd, servers, workers=workers)
    proc = start(name, [nginx, "-c", str(conf), "-e", str(wd / "nginx-error.log")], workdir=wd)
    wait_http(proc, probe_port, timeout=15)
    return proc


# ------------------------------------------------------------------------------------------ wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses
    raw: str = field(repr=False, default="")

    def as_dict(self) -> dict[str, Any]:
        return {"rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
                "requests": self.requests, "errors": self.errors}


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def wrk_script(workdir: Path, name: str, *, method: str, headers: dict[str, str], body: str | None) -> Path:
    """A wrk Lua script sending the same request every time."""
    def lua(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"wrk.method = {lua(method)}"]
    lines += [f"wrk.headers[{lua(k)}] = {lua(v)}" for k, v in headers.items()]
    if body is not None:
        lines.append(f"wrk.body = {lua(body)}")
    path = workdir / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, script: Path, *, connections: int = 16, threads: int = 2, duration: float = 10.0,
            timeout: str = "10s") -> WrkResult:
    wrk = require_tool("wrk", "install it with `apt-get install -y wrk`")
    argv = [wrk, f"-c{connections}", f"-t{threads}", f"-d{max(1, round(duration))}s", f"--timeout={timeout}",
            "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    text = out.stdout + out.stderr
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"wrk gave no result for {url}:\n{text}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(x) for x in m.groups())
    return WrkResult(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)), errors, text)


# ------------------------------------------------------------------------------------------ sequential client


# The first streamed event that carries text (the role-only first chunk has "content":"").
_TOKEN = re.compile(rb'"content":\s*"[^"]')


class KeepAliveClient:
    """One persistent HTTP/1.1 connection sending a fixed request; ``once()`` returns (status, seconds).

    Deliberately minimal (raw socket, no parsing beyond framing) so its own cost is small and the
    same for every contender. ``first_event=True`` also returns the time to the first SSE ``data:``
    line that carries content (time to first token).
    """

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        s = socket.create_connection((HOST, self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = s, b""
        return s

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def _fill(self, s: socket.socket) -> None:
        data = s.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def once(self, *, first_event: bool = False) -> tuple[int, float, float | None]:
        s = self.sock or self._connect()
        t0 = time.perf_counter()
        s.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            self._fill(s)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        ttft: float | None = None
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = bytearray()
            while True:
                while b"\r\n" not in self.buf:
                    self._fill(s)
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill(s)
                chunk, self.buf = self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    break
                body += chunk
                if first_event and ttft is None and _TOKEN.search(body):
                    ttft = time.perf_counter() - t0
        else:
            length = int(headers.get(b"content-length", b"0"))
            while len(self.buf) < length:
                self._fill(s)
                if first_event and ttft is None and _TOKEN.search(self.buf):
                    ttft = time.perf_counter() - t0
            if first_event and ttft is None and _TOKEN.search(self.buf[:length]):
                ttft = time.perf_counter() - t0
            self.buf = self.buf[length:]
        elapsed = time.perf_counter() - t0
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, elapsed, ttft


def http_request(method: str, path: str, *, port: int, headers: dict[str, str], body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------------------ memory


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                for k in kids:
                    out.append(int(k))
                    todo.append(int(k))
        except OSError:
            continue
    return out


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


# ------------------------------------------------------------------------------------------ output


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header)."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h) in enumerate(columns)]
    line = "  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for c in cells:
        out.append("  ".join((v.rjust(w) if i else v.ljust(w)) for i, (v, w) in enumerate(zip(c, widths, strict=True))))
    return "\n".join(out)


def machine_summary() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    t0 = time.monotonic()
    print(f"\n== {title}", flush=True)
    yield
    print(f"   ({time.monotonic() - t0:.1f}s)", flush=True)


def fsync_probe(directory: Path, n: int = 200) -> dict[str, float]:
    """fdatasync latency (ms) of 300-byte appends in ``directory``: what one durable log batch costs there."""
    path = directory / f".fsync-probe-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times: list[float] = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 299 + b"\n")
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return {"p50_ms": round(percentile(times, 50), 3), "p90_ms": round(percentile(times, 90), 3),
            "p99_ms": round(percentile(times, 99), 3), "n": n}


def cold_probe(directory: Path, *, gap: float = 0.025, n: int = 100) -> dict[str, float]:
    """What this machine charges the first work after an idle pause (the streaming benchmark's pattern:
    a request every ~25 ms), against the same work back to back, all in this process:

    * ``fsync``: a 300-byte append + fdatasync in ``directory`` (the request log's disk);
    * ``code``: a fixed piece of Python (parse, checksum and SHA-256 of an API key, ~3 µs when hot).

    Medians in µs. A gateway does both before it forwards a request, so an idle-then-busy
    pattern measures these penalties along with the gateway.
    """
    from releasegate import credentials

    token = "rgk_4szX7TT3anYuB5RqvAu4OZgGWxKCYEOz1Qtx3Gk7CfSk3NR3OX"
    digest = credentials.hash_secret(token)

    def code() -> None:
        credentials.parse(token, "rgk")
        credentials.matches(token, digest)

    path = directory / f".cold-probe-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out: dict[str, float] = {}
    try:
        for label, pause in (("hot", 0.0), ("after_gap", gap)):
            runs, syncs = [], []
            for _ in range(n):
                if pause:
                    time.sleep(pause)
                t0 = time.perf_counter()
                code()
                runs.append((time.perf_counter() - t0) * 1e6)
            for _ in range(n):
                if pause:
                    time.sleep(pause)
                t0 = time.perf_counter()
                os.write(fd, b"x" * 299 + b"\n")
                os.fdatasync(fd)
                syncs.append((time.perf_counter() - t0) * 1e6)
            out[f"code_{label}_us"] = round(median(runs), 1)
            out[f"fsync_{label}_us"] = round(median(syncs), 1)
    finally:
        os.close(fd)
        path.unlink()
    out["gap_ms"] = gap * 1000
    return out


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def code_version() -> dict[str, Any]:
    """Which code was measured: git HEAD plus a digest of the working tree's package sources (it changes daily)."""
    import hashlib

    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_head"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                          text=True, timeout=10).stdout.strip()
    h = hashlib.sha256()
    newest = 0.0
    for path in sorted((REPO / "src" / "releasegate").rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
            newest = max(newest, path.stat().st_mtime)
    info["src_digest"] = h.hexdigest()[:16]
    info["src_newest_mtime_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))
    return info
