"""Run a real nginx for integration tests: a generated config in a temp dir, free loopback ports, ``daemon off``.

Skips (loudly) only when the ``nginx`` binary is missing; CI installs the Debian package ``nginx``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_REASON = ("nginx is NOT INSTALLED, so the nginx auth_request integration test cannot run: "
               "install the Debian package with `apt-get install -y nginx` (.ci/run does)")


def nginx_binary() -> str:
    """The nginx executable, or skip the calling test with a loud reason."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
    if found is None:
        pytest.skip(SKIP_REASON)
    return found


def config(tmp: Path, http_body: str) -> str:
    """A complete nginx.conf that keeps every file inside ``tmp``."""
    return f"""
user root;
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http_body}
}}
"""


@contextlib.contextmanager
def run_nginx(tmp: Path, http_body: str, port: int, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Start nginx with ``http_body`` inside ``http {}`` (it must listen on ``port``); yields its base URL."""
    binary = nginx_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(config(tmp, http_body))
    check = subprocess.run([binary, "-t", "-q", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                           capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected the generated config:\n{check.stderr}\n{conf.read_text()}")
    proc = subprocess.Popen([binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start (exit {proc.poll()}): {log}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def error_log(tmp: Path) -> str:
    path = tmp / "error.log"
    return path.read_text() if path.exists() else ""
