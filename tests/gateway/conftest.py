"""Gateway fixtures: a mock upstream on loopback, a release in a store, gateway replicas in threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_world import EXAMPLE, World, build_world, make_ctx, make_service, plan_text
from releasegate.gateway.app import GatewayApp
from releasegate.gateway.service import GatewayService
from releasegate.gateway.serving import GatewayHttpProtocol
from releasegate.mockupstream import MockUpstream, create_mock_upstream
from releasegate.services.context import ServiceContext
from releasegate.testing.server import run_in_thread


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[MockUpstream, str]]:
    app = create_mock_upstream(name="gw-test")
    with run_in_thread(app) as base_url:
        yield app, base_url


@pytest.fixture
def upstream(mock: tuple[MockUpstream, str]) -> MockUpstream:
    mock[0].reset()
    return mock[0]


@pytest.fixture(scope="module")
def world(mock: tuple[MockUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One SQLite store with the example release (v1 and v2 active in stage 'internal'), shared by a module."""
    tmp = tmp_path_factory.mktemp("gw")
    ctx = make_ctx(f"sqlite:///{tmp / 'rg.db'}", tmp / "data")
    yield build_world(ctx, plan_text(EXAMPLE.read_text(), mock[1] + "/v1"))
    ctx.db.dispose()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """start_gateway(ctx, **kw) -> (base_url, service): a replica on a free loopback port until the test ends."""
    stack: list[Any] = []

    def start(ctx: ServiceContext, **kw: Any) -> tuple[str, GatewayService]:
        service = make_service(ctx, tmp_path, **kw)
        cm = run_in_thread(GatewayApp(service), http=GatewayHttpProtocol)  # the protocol the CLI serves with
        url = cm.__enter__()
        stack.append(cm)
        return url, service

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def gateway(world: World, start_gateway: Callable[..., Any]) -> tuple[str, GatewayService]:
    return start_gateway(world.ctx)
