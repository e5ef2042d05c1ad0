"""The servers the gateway benchmark compares, all in front of the same fixed-body nginx upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _harness import (
    BENCH_DIR,
    HOST,
    REPO,
    BenchError,
    Proc,
    Servers,
    free_port,
    start,
    start_nginx,
    wait_http,
    wait_log,
)
from _rg_world import GatewayWorld

STARTED = "Application startup complete"  # uvicorn logs it once per worker

# What the upstream answers to every request: an OpenAI chat completion with usage (what the mock upstream sends).
FIXED_BODY = json.dumps({
    "id": "chatcmpl-bench0000000000000000000000000000", "object": "chat.completion", "created": 1796044131,
    "model": "atlas-8b-v1", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "[bench atlas-8b-v1] Hello! How can I help?",
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}, "service_tier": "default",
}, separators=(",", ":"))
UPSTREAM_KEY = "sk-bench-upstream"
LITELLM_MASTER_KEY = "sk-litellm-bench-master"
LITELLM_MODEL = "atlas"


@dataclass
class Contender:
    """One way of reaching the upstream: where to send, what to send, and the processes behind it."""

    name: str
    port: int
    model: str
    token: str
    path: str = "/v1/chat/completions"
    procs: list[Proc] = field(default_factory=list)
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)  # more request fields (e.g. stream_options)

    def body(self, *, stream: bool = False) -> bytes:
        b: dict[str, object] = {"model": self.model, "max_tokens": 64,
                                "messages": [{"role": "user", "content": "Hello, how are you today?"}]}
        if stream:
            b["stream"] = True
        b.update(self.extra)
        return json.dumps(b, separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"


def start_upstream(servers: Servers, workdir: Path, *, workers: int) -> int:
    """nginx answering FIXED_BODY to everything on a loopback port; returns the port."""
    port = free_port()
    block = f"""
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{ default_type application/json; return 200 '{FIXED_BODY}'; }}
    }}"""
    servers.add(start_nginx("nginx-upstream", workdir, block, workers=workers, probe_port=port))
    return port


def start_nginx_proxy(servers: Servers, workdir: Path, upstream_port: int, *, workers: int) -> Contender:
    port = free_port()
    block = f"""
    upstream model_servers {{ server {HOST}:{upstream_port}; keepalive 256; }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://model_servers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    proc = servers.add(start_nginx("nginx-proxy", workdir, block, workers=workers, probe_port=port))
    return Contender("nginx reverse proxy", port, "atlas-8b-v1", UPSTREAM_KEY, procs=[proc],
                     note=f"nginx {workers} workers, keepalive pool")


def _uvicorn(app: str, port: int, workers: int, *, factory: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--workers", str(workers),
            "--no-access-log", "--log-level", "info", "--app-dir", str(BENCH_DIR)]
    return argv + (["--factory"] if factory else [])


def start_bare_proxy(servers: Servers, workdir: Path, upstream_port: int, *, workers: int,
                     name: str = "bare-proxy") -> Contender:
    port = free_port()
    proc = servers.add(start(name, _uvicorn("bare_proxy:app", port, workers), workdir=workdir,
                             env={"BARE_PROXY_UPSTREAM": f"http://{HOST}:{upstream_port}"}))
    wait_http(proc, port, timeout=60)
    wait_log(proc, STARTED, workers)
    return Contender("bare Python ASGI proxy", port, "atlas-8b-v1", UPSTREAM_KEY, procs=[proc],
                     note=f"uvicorn {workers} workers + the gateway's http1 client, no policy")


def start_releasegate(servers: Servers, workdir: Path, world: GatewayWorld, *, workers: int | None, redis_url: str | None,
                      name: str = "releasegate", log_root: Path | None = None, label: str | None = None) -> Contender:
    """A gateway over the prepared store: key check, decision, limiter, durable log (+ shipper), all on.

    Runs releasegate's own command, ``releasegate gateway``: one process for ``workers=None``, else
    ``--workers N`` (uvicorn's worker processes, each a replica with its own request log).
    ``log_root``: where the request log goes (default ``workdir``, i.e. the disk); a tmpfs there
    shows what the rest of the gateway costs when fdatasync is nearly free.
    """
    port = free_port()
    log_dir = (log_root or workdir) / f"{name}-requestlog"
    env = {
        "RELEASEGATE_DATABASE_URL": world.database_url, "RELEASEGATE_DATA_DIR": str(world.data_dir),
        "ATLAS_UPSTREAM_KEY": UPSTREAM_KEY,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    if redis_url:
        env["RELEASEGATE_REDIS_URL"] = redis_url
    argv = [sys.executable, "-c", "import sys; from releasegate.cli.main import main; sys.argv[0] = 'releasegate'; main()",
            "--data-dir", str(world.data_dir), "gateway",
            "--host", HOST, "--port", str(port), "--request-log-dir", str(log_dir), "--replica", name,
            "--log-level", "info"]
    if workers is None:
        how = "`releasegate gateway`, 1 process"
    else:
        argv += ["--workers", str(workers)]
        how = f"`releasegate gateway --workers {workers}`"
    proc = servers.add(start(name, argv, workdir=workdir, env=env))
    wait_http(proc, port, path="/gateway/healthz", timeout=90)
    wait_log(proc, STARTED, workers or 1)
    limiter = "Redis limiter" if redis_url else "in-process limiter"
    where = "log fsync'd on tmpfs" if log_root is not None else "log fsync'd on disk"
    return Contender(label or name, port, world.model_v1, world.key, procs=[proc],
                     note=f"{how}; key+decision+{limiter}+{where}+shipper")


def start_litellm(servers: Servers, workdir: Path, upstream_port: int, *, workers: int, venv: Path) -> Contender:
    """LiteLLM's proxy from its own venv (master key, no database); BenchError says why it cannot run."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise BenchError(f"{exe} does not exist (install: python -m venv {venv} && {venv}/bin/pip install "
                         "'litellm[proxy]')")
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                              "print(m.version('litellm'))"], capture_output=True, text=True).stdout.strip()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: {LITELLM_MODEL}
    litellm_params:
      model: openai/atlas-8b-v1
      api_base: http://{HOST}:{upstream_port}/v1
      api_key: {UPSTREAM_KEY}
general_settings:
  master_key: {LITELLM_MASTER_KEY}
litellm_settings:
  telemetry: false
  set_verbose: false
""")
    port = free_port()
    # No network here: use the bundled model cost map instead of fetching it.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", "VIRTUAL_ENV": str(venv),
           "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    proc = servers.add(start("litellm", [str(exe), "--config", str(cfg), "--host", HOST, "--port", str(port),
                                         "--num_workers", str(workers)], workdir=workdir, env=env))
    # Slow to import; under load uvicorn's supervisor may restart a worker that missed its ping.
    wait_http(proc, port, path="/health/liveliness", timeout=420)
    wait_log(proc, STARTED, workers, timeout=300)
    return Contender(f"LiteLLM proxy {version}", port, LITELLM_MODEL, LITELLM_MASTER_KEY, procs=[proc],
                     note=f"{workers} workers, master key, no database")


def start_stream_upstream(servers: Servers, workdir: Path, *, chunk_delay: float, chunks: int) -> int:
    """The mock upstream streaming ``chunks`` content chunks, ``chunk_delay`` s before each; returns the port."""
    port = free_port()
    proc = servers.add(start("mock-stream", [sys.executable, "-m", "releasegate.mockupstream", "--port", str(port),
                                             "--chunk-delay", str(chunk_delay), "--chunks", str(chunks),
                                             "--log-level", "warning"], workdir=workdir))
    wait_http(proc, port, path="/v1/models", timeout=60)
    return port
