"""Command-line runner: ``python -m releasegate.mockupstream --port 8001 ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from releasegate.mockupstream.app import DEFAULT_MODELS, create_mock_upstream

__all__ = ["BANNER", "main"]

BANNER = """\
==============================================================================
  MOCK MODEL SERVER (releasegate.mockupstream) -- NOT A REAL MODEL
  Deterministic fake OpenAI-compatible answers for demos, tests and benchmarks.
  name={name} models={models}
  listening on {url}/v1   (control: {url}/_mock/requests, /_mock/reset)
  chunk_delay={chunk_delay}s api_key={auth} record_file={record_file}
=============================================================================="""


def main(argv: Sequence[str] | None = None) -> int:
    import socket

    import uvicorn

    p = argparse.ArgumentParser(
        prog="python -m releasegate.mockupstream",
        description="MOCK OpenAI-compatible model server (not a real model).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=8001, help="0 picks a free port (printed in the banner)"
    )
    p.add_argument("--name", default="mock")
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    p.add_argument("--strict-models", action="store_true")
    p.add_argument("--record-file", default=None)
    p.add_argument("--max-recorded", type=int, default=10_000)
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop: auto (uvloop when installed), asyncio or uvloop",
    )
    args = p.parse_args(argv)

    app = create_mock_upstream(
        name=args.name,
        chunk_delay=args.chunk_delay,
        chunks=args.chunks,
        api_key=args.api_key,
        models=[m for m in args.models.split(",") if m],
        strict_models=args.strict_models,
        record_file=args.record_file,
        max_recorded=args.max_recorded,
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP (uvloop on all).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    url = f"http://[{args.host}]:{port}" if ":" in args.host else f"http://{args.host}:{port}"
    print(
        BANNER.format(
            name=args.name,
            models=",".join(app.models),
            url=url,
            chunk_delay=args.chunk_delay,
            auth="required" if args.api_key else "none",
            record_file=args.record_file or "-",
        ),
        flush=True,
    )
    config = uvicorn.Config(
        app,
        lifespan="on",
        loop=args.loop,
        log_level=args.log_level,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
