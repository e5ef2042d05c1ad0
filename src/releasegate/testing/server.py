"""Run any ASGI app on a real loopback port in a background thread (tests, demos, benchmarks).

Pytest-free on purpose so scripts and benchmarks can use it too::

    from releasegate.testing.server import run_in_thread

    with run_in_thread(app) as base_url:          # e.g. "http://127.0.0.1:53817"
        httpx.get(base_url + "/v1/models")

Design points:

* The listening socket is bound *before* the thread starts (``port=0`` picks a free port),
  so there is no "find a free port, then race someone for it" window, and the yielded URL
  is valid immediately.
* Each server runs its own event loop in its own thread, so several servers can run in one
  process at the same time (gateway + mock upstream + control plane, say).
* The context manager returns only once uvicorn has finished startup (lifespan included);
  a startup failure (lifespan error, import error...) is raised in the caller's thread.
* On exit the server is asked to stop gracefully (bounded by ``shutdown_timeout``), then
  forced; the thread is joined. Signal handlers are never installed (not the main thread).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["ServerThread", "run_in_thread"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServerThread:
    """A uvicorn server in a daemon thread. Prefer :func:`run_in_thread`; use this for
    explicit ``start()``/``stop()`` (e.g. a benchmark that restarts a server)."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 20.0,
        shutdown_timeout: float = 5.0,
        **uvicorn_kwargs: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        opts: dict[str, Any] = {
            "lifespan": "on",
            "log_level": "warning",
            "access_log": False,
            # The helper serves HTTP apps; importing the websockets stack is pointless work
            # and can emit deprecation warnings that pytest's "error" filter would turn fatal.
            "ws": "none",
            "timeout_graceful_shutdown": shutdown_timeout,
        }
        opts.update(uvicorn_kwargs)
        self.config = uvicorn.Config(app, **opts)
        self.server = uvicorn.Server(self.config)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.port: int = 0
        self.base_url: str = ""

    # -- lifecycle ------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sock is not None
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit on lifespan startup failure included
            self._error = exc

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._sock = _bind(self.host, self.requested_port)
        self.port = self._sock.getsockname()[1]
        self.base_url = _url(self.host, self.port)
        self._thread = threading.Thread(
            target=self._run, name=f"asgi-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self._cleanup_socket()
                raise RuntimeError(
                    f"ASGI server on {self.base_url} failed to start: {self._error!r}"
                ) from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"ASGI server on {self.base_url} did not start in {self.startup_timeout}s"
                )
            time.sleep(0.005)
        return self.base_url

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self.server.should_exit = True
        thread.join(self.shutdown_timeout + 2.0)
        if thread.is_alive():
            self.server.force_exit = True
            thread.join(5.0)
        self._cleanup_socket()
        self._thread = None

    def _cleanup_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.server.started

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    **kwargs: Any,
) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (0 = a free port) in a background thread.

    Yields the base URL (``http://127.0.0.1:PORT``, no trailing slash). Extra keyword
    arguments go to :class:`ServerThread` (``startup_timeout``, ``shutdown_timeout``) or to
    ``uvicorn.Config`` (e.g. ``http="h11"``, ``lifespan="off"``).
    """
    server = ServerThread(app, host, port, **kwargs)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()
