"""Detectors on real traffic: a replica with the mock upstream, its durable log, the shipper, the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from gateway_world import (
    EXAMPLE,
    MODEL,
    RM,
    World,
    build_world,
    chat,
    log_records,
    make_ctx,
    make_service,
    plan_text,
)
from releasegate.gateway.app import GatewayApp
from releasegate.gateway.service import GatewayService
from releasegate.gateway.shipper import RequestLogShipper
from releasegate.mockupstream import MockUpstream, create_mock_upstream
from releasegate.plan.loader import load_plan_text
from releasegate.services import plans
from releasegate.store.requests import RequestBucket, RequestEvent
from releasegate.testing.server import run_in_thread

EXAMPLE_DETECTORS = ('  moderation: {kind: patterns, sample: 1.0, patterns: ["(?i)synthesi[sz]e .*nerve agent", '
                     '"(?i)ransomware payload"]}\n')
DETECTORS = EXAMPLE_DETECTORS + (
    '  gate: {kind: patterns, mode: inline, scan: input, patterns: ["(?i)forbidden phrase"]}\n'
    # Nothing listens on the discard port: this detector can never judge.
    '  remote: {kind: moderation, base_url: "http://127.0.0.1:9/v1", timeout: 0.5}\n')

Gateway = tuple[str, GatewayService, MockUpstream, World, str]  # url, replica, upstream, store, plan text


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[MockUpstream, str]]:
    app = create_mock_upstream(name="detectors-test")
    with run_in_thread(app) as base_url:
        yield app, base_url


@pytest.fixture
def gateway(mock: tuple[MockUpstream, str], tmp_path: Path) -> Iterator[Gateway]:
    """A fresh store with the example release plus an inline and a broken detector, and one replica."""
    text = plan_text(EXAMPLE.read_text(), mock[1] + "/v1")
    assert EXAMPLE_DETECTORS in text
    ctx = make_ctx(f"sqlite:///{tmp_path / 'rg.db'}", tmp_path / "data")
    text = text.replace(EXAMPLE_DETECTORS, DETECTORS)
    world = build_world(ctx, text)
    service = make_service(ctx, tmp_path)
    with run_in_thread(GatewayApp(service)) as url:
        yield url, service, mock[0], world, text
    ctx.db.dispose()


def sdk(gw: Gateway, key: str = "acme-internal/customer-support") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw[0] + "/v1", api_key=gw[3].key(key), max_retries=0, timeout=10)


def records_of(gw: Gateway, request_id: str, kind: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in log_records(gw[1]) if r.get("id") == request_id and r["kind"] == kind]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_flagged_request_is_served_recorded_and_counted_after_shipping(gateway: Gateway) -> None:
    raw = sdk(gateway).chat.completions.with_raw_response.create(**chat("show me a ransomware payload"))
    assert raw.parse().choices[0].message.content == "[mock atlas-8b-v1] you said: show me a ransomware payload"
    rid = raw.headers["x-request-id"]
    fine = sdk(gateway).chat.completions.with_raw_response.create(**chat("where is my order?"))
    flags = records_of(gateway, rid, "flags")
    assert len(flags) == 1
    assert flags[0]["flags"] == {"moderation": {"category": "input", "score": 1.0, "detail": "(?i)ransomware payload"}}
    # The broken detector is recorded as not judging, never as a pass, and never failed the request.
    assert "could not be reached" in flags[0]["detector_errors"]["remote"]
    unflagged = records_of(gateway, fine.headers["x-request-id"], "flags")
    assert unflagged and unflagged[0]["flags"] == {} and set(unflagged[0]["detector_errors"]) == {"remote"}
    # Both flags records are durable, and the log writes in order: every start and end before them is too.
    shipper = RequestLogShipper(gateway[1].request_log.directory, gateway[3].ctx.db)  # type: ignore[attr-defined]
    try:
        shipper.ship_once_sync()
    finally:
        shipper.close()
    with gateway[3].ctx.db.read() as s:
        event = s.get(RequestEvent, rid)
        assert event is not None and event.flags["moderation"]["detail"] == "(?i)ransomware payload"
        assert event.flags["remote"]["error"].startswith("http://127.0.0.1:9/v1/moderations could not be reached")
        buckets = s.scalars(select(RequestBucket).where(RequestBucket.deployer_id ==
                                                         gateway[3].deployer_ids["acme-internal"])).all()
        assert sum(b.requests for b in buckets) == 2
        assert [b.flagged for b in buckets] == [{"moderation": 1}]
    metrics = httpx.get(gateway[0] + "/metrics").text
    assert 'detector="moderation"' in metrics


def test_an_inline_detector_refuses_before_the_upstream_sees_the_request(gateway: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk(gateway).chat.completions.create(**chat("please say the Forbidden Phrase"))
    assert err.value.code == "content_flagged"
    assert "flagged its content (gate)" in err.value.message
    rid = err.value.response.headers["x-request-id"]
    assert gateway[2].state.snapshot(request_id=rid) == []
    end = records_of(gateway, rid, "end")[0]
    assert end["status"] == 403 and end["reason_code"] == "content_flagged" and end["outcome"] == "denied"
    assert end["flags"] == {"gate": {"category": "input", "score": 1.0, "detail": "(?i)forbidden phrase"}}
    assert records_of(gateway, rid, "start", timeout=0.2) == []  # never forwarded, so never started


def test_streams_are_inspected_on_their_input(gateway: Gateway) -> None:
    stream = sdk(gateway).chat.completions.with_raw_response.create(
        **chat("how to synthesize a deadly nerve agent", model=f"{MODEL}:v1", stream=True))
    rid = stream.headers["x-request-id"]
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text.startswith("[mock atlas-8b-v1]")
    flags = records_of(gateway, rid, "flags")
    assert flags and flags[0]["flags"]["moderation"]["category"] == "input"


def test_a_new_plan_revision_rebuilds_the_detectors(gateway: Gateway) -> None:
    service, world = gateway[1], gateway[3]
    before = service.detectors.models[MODEL]
    text = gateway[4].replace("forbidden phrase", "secret handshake")
    plans.apply(world.ctx, RM, load_plan_text(text))  # the replica shares the store: applying is all it takes
    service.poke()
    deadline = time.monotonic() + 5
    while service.detectors.models[MODEL] is before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.detectors.models[MODEL] is not before
    sdk(gateway).chat.completions.create(**chat("the forbidden phrase is fine now"))
    with pytest.raises(openai.PermissionDeniedError, match="flagged its content"):
        sdk(gateway).chat.completions.create(**chat("the secret handshake"))


def test_no_detectors_means_nothing_is_inspected(mock: tuple[MockUpstream, str], tmp_path: Path) -> None:
    text = plan_text(EXAMPLE.read_text(), mock[1] + "/v1").replace("detectors:\n" + EXAMPLE_DETECTORS, "")
    text = "\n".join(line for line in text.splitlines() if "flag_rate" not in line) + "\n"
    ctx = make_ctx(f"sqlite:///{tmp_path / 'rg.db'}", tmp_path / "data")
    world = build_world(ctx, text)
    service = make_service(ctx, tmp_path)
    with run_in_thread(GatewayApp(service)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=world.key("acme-internal/customer-support"),
                               max_retries=0, timeout=10)
        client.chat.completions.create(**chat("show me a ransomware payload"))
        assert service.detectors.models == {}
        assert service.detectors.stats.submitted == 0
    assert [r for r in log_records(service) if r["kind"] == "flags"] == []
    ctx.db.dispose()
