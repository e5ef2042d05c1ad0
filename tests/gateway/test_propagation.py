"""Changes reach every replica: a halt within one second on PostgreSQL, atomic retargets, fail-closed staleness."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway_world import EXAMPLE, MODEL, RM, World, build_world, chat, make_ctx, plan_text
from releasegate.gateway.notify import change_listener, make_notifier
from releasegate.gateway.service import GatewayService
from releasegate.mockupstream import MockUpstream
from releasegate.services import keys, rollouts
from releasegate.settings import Settings

Gateway = tuple[str, GatewayService]


@pytest.fixture
def fresh_world(mock: tuple[MockUpstream, str], tmp_path: Path) -> Iterator[World]:
    """A release of its own (these tests change it), on SQLite."""
    ctx = make_ctx(f"sqlite:///{tmp_path / 'rg.db'}", tmp_path / "data")
    yield build_world(ctx, plan_text(EXAMPLE.read_text(), mock[1] + "/v1"))
    ctx.db.dispose()


def post(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=chat(model=model),
                      headers={"authorization": f"Bearer {key}"}, timeout=5)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_halt_reaches_every_replica_within_a_second(database_url: str, mock: tuple[MockUpstream, str], tmp_path: Path,
                                                      start_gateway: Callable[..., Gateway]) -> None:
    ctx = make_ctx(database_url, tmp_path / "data")
    world = build_world(ctx, plan_text(EXAMPLE.read_text(), mock[1] + "/v1"))
    channel = f"rg_test_{uuid.uuid4().hex[:8]}"
    # Replicas poll only every 30 s here, so only the notification can make the deadline.
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, snapshot_poll_interval=30,
                        snapshot_max_age=120)
    replicas = [start_gateway(ctx, settings=settings, notifier=make_notifier(settings, database_url, channel=channel))
                for _ in range(2)]
    publisher = make_notifier(settings, database_url, channel=channel)
    assert publisher is not None
    ctx.on_change.append(change_listener(publisher, ctx.db))  # what `serve` wires for the control plane
    deadline = time.monotonic() + 10
    while not all(r[1].notifier.subscribed.is_set() for r in replicas):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "replicas never subscribed"
        time.sleep(0.02)
    key = world.key("acme-internal/customer-support")
    assert all(post(url, key, f"{MODEL}:v1").status_code == 200 for url, _ in replicas)

    started = time.monotonic()
    rollouts.transition(ctx, RM, MODEL, "v1", "halt", reason="drill: critical incident")
    refused_at: dict[str, float] = {}
    while len(refused_at) < len(replicas) and time.monotonic() - started < 5:
        for url, _ in replicas:
            if url not in refused_at:
                r = post(url, key, f"{MODEL}:v1")
                if r.status_code == 403:
                    assert r.json()["error"]["code"] == "version_halted"
                    assert "drill: critical incident" in r.json()["error"]["message"]
                    refused_at[url] = time.monotonic() - started
    print(f"halt refused after: {refused_at}")
    assert len(refused_at) == 2 and max(refused_at.values()) < 1.0, refused_at
    ctx.db.dispose()


def test_retarget_switches_all_traffic_at_once(fresh_world: World, start_gateway: Callable[..., Gateway]) -> None:
    url, service = start_gateway(fresh_world.ctx)
    fresh_world.ctx.on_change.append(service.poke)  # the in-process wiring of `serve`
    key = fresh_world.key("acme-internal/customer-support")
    assert post(url, key, "atlas").headers["x-releasegate-version"] in (f"{MODEL}:v1", f"{MODEL}:v2")
    rollouts.retarget(fresh_world.ctx, RM, MODEL, "atlas", {"v1": 100}, reason="everyone on v1 first")
    deadline = time.monotonic() + 1.0
    while post(url, key, "atlas").headers["x-releasegate-version"] != f"{MODEL}:v1":
        assert time.monotonic() < deadline
    rollouts.retarget(fresh_world.ctx, RM, MODEL, "atlas", {"v2": 100}, reason="canary looks good")
    deadline = time.monotonic() + 1.0
    while post(url, key, "atlas").headers["x-releasegate-version"] != f"{MODEL}:v2":
        assert time.monotonic() < deadline
    assert {post(url, key, "atlas").headers["x-releasegate-version"] for _ in range(20)} == {f"{MODEL}:v2"}


def test_revoked_key_is_refused_at_once(fresh_world: World, start_gateway: Callable[..., Gateway]) -> None:
    url, service = start_gateway(fresh_world.ctx)
    fresh_world.ctx.on_change.append(service.poke)
    key = fresh_world.key("acme-internal/customer-support")
    assert post(url, key, MODEL).status_code == 200
    keys.revoke(fresh_world.ctx, RM, fresh_world.key_ids["acme-internal/customer-support"], reason="leaked")
    deadline = time.monotonic() + 1.0
    while (r := post(url, key, MODEL)).status_code == 200:
        assert time.monotonic() < deadline
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"


def test_stale_snapshot_fails_closed_and_recovers(fresh_world: World, start_gateway: Callable[..., Gateway],
                                                  tmp_path: Path) -> None:
    broken = {"store": False}

    def revision() -> int:
        if broken["store"]:
            raise ConnectionError("store unreachable")
        from releasegate.gateway.snapshot import read_revision

        return read_revision(fresh_world.ctx.db)

    settings = Settings(data_dir=tmp_path / "data", snapshot_max_age=0.6, snapshot_poll_interval=0.1)
    url, _ = start_gateway(fresh_world.ctx, settings=settings, sources={"revision_source": revision})
    client = openai.OpenAI(base_url=url + "/v1", api_key=fresh_world.key("acme-internal/customer-support"),
                           max_retries=0, timeout=5)
    assert client.chat.completions.create(**chat()).choices
    broken["store"] = True
    time.sleep(1.0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(**chat())
    assert exc.value.status_code == 503 and exc.value.code == "policy_stale"
    assert httpx.get(url + "/gateway/healthz").status_code == 503
    broken["store"] = False
    deadline = time.monotonic() + 2
    while True:
        try:
            assert client.chat.completions.create(**chat()).choices
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
