"""Behind nginx: releasegate decides and records, nginx sends the bytes (X-Accel-Redirect)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from huggingface_hub import hf_hub_download

from processes import free_port
from releasegate.api import errors
from releasegate.services.context import Actor
from releasegate.testing.server import run_in_thread
from releasegate.weights import downloads
from releasegate.weights.config import WeightsConfig
from releasegate.weights.hub import create_hub_router
from weights_world import MODEL, World

NGINX = shutil.which("nginx")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: this is about the proxy hand-off; the store is covered on both backends elsewhere."""
    return f"sqlite:///{tmp_path / 'releasegate.db'}"


@pytest.fixture
def fronted(world: World, tmp_path: Path) -> Iterator[str]:
    app = FastAPI()
    app.state.ctx = world.ctx
    errors.install(app)
    app.include_router(create_hub_router(WeightsConfig(accel_redirect="/_rg/")))
    port = free_port()
    data = world.ctx.settings.data_dir.resolve()
    with run_in_thread(app) as upstream:
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
user {getpass.getuser()}; daemon off; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.err;
events {{}}
http {{
  access_log off; sendfile on;
  client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p; fastcgi_temp_path {tmp_path}/f;
  uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass {upstream}; proxy_set_header Host $http_host; proxy_buffering off; }}
    location /_rg/ {{ internal; alias {data}/; etag off; }}
  }}
}}""")
        proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_nginx_serves_the_bytes_releasegate_authorised(world: World, fronted: str, tmp_path: Path,
                                                       granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("ng", "ng@uni.edu")
    src = world.plan_dir / "artifacts" / "v1"
    cfg = hf_hub_download(MODEL, "config.json", cache_dir=tmp_path / "c", endpoint=fronted, token=token)
    assert Path(cfg).read_bytes() == (src / "config.json").read_bytes()
    # First fingerprinted download streams through releasegate; the repeat is a cached copy nginx sends.
    first = Path(hf_hub_download(MODEL, "model.safetensors", cache_dir=tmp_path / "d", endpoint=fronted, token=token)).read_bytes()
    again = Path(hf_hub_download(MODEL, "model.safetensors", cache_dir=tmp_path / "e", endpoint=fronted, token=token)).read_bytes()
    assert first == again and first != (src / "model.safetensors").read_bytes()
    loc = httpx.get(f"{fronted}/{MODEL}/resolve/main/model.safetensors", headers={"Authorization": f"Bearer {token}"}).headers["Location"]
    part = httpx.get(fronted + loc, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == first[100:200], part.headers
    assert "X-Accel-Redirect" not in part.headers, part.headers
    assert httpx.get(f"{fronted}/_rg/artifacts/").status_code == 404  # the internal location is not reachable
    rows = downloads.list_downloads(world.ctx, Actor(name="a", role="admin"), MODEL)
    assert len(rows) == 4 and all(r["completed"] for r in rows)
