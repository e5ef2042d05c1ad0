"""``/metrics``: series and labels after real requests, bounded cardinality, one registry per app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_world import MODEL, RM, World, chat
from releasegate.gateway.metrics import CODES, GatewayMetrics, RequestLogCollector, series_count
from releasegate.gateway.requestlog import FileRequestLog, RequestLogShipper
from releasegate.gateway.service import GatewayService, count, note_flag
from releasegate.mockupstream import MockUpstream
from releasegate.server import create_server_app
from releasegate.services import incidents
from releasegate.services.metrics import ControlPlaneCollector
from releasegate.testing.server import run_in_thread

Sample = tuple[str, dict[str, str], float]


def scrape(base_url: str, path: str = "/metrics") -> list[Sample]:
    """Every sample of the exposition at ``path``, parsed by prometheus_client's own parser."""
    resp = httpx.get(base_url + path)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(resp.text) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == want for k, want in labels.items()))


def sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_series_have_the_labels_of_real_requests(gateway: tuple[str, GatewayService], world: World,
                                                 upstream: MockUpstream) -> None:
    url = gateway[0]
    client = sdk(url, world.key("acme-internal/customer-support"))
    served = client.chat.completions.create(**chat())
    assert served.usage is not None
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(**chat(), max_tokens=4096)
    with pytest.raises(openai.AuthenticationError):
        sdk(url, "rgk_nope").chat.completions.create(**chat())
    samples = scrape(url)
    who = {"model": MODEL, "version": "v1", "stage": "internal", "use_case": "customer-support",
           "deployer": world.deployer_ids["acme-internal"]}
    assert value(samples, "releasegate_requests_total", **who, outcome="allowed", code="none") == 1
    assert value(samples, "releasegate_requests_total", **who, outcome="denied", code="scope_violation") == 1
    # Refused before the key was known: no version, no deployer, the reason code only.
    assert value(samples, "releasegate_requests_total", model="", deployer="", outcome="denied",
                 code="invalid_api_key") == 1
    assert value(samples, "releasegate_tokens_total", **who, kind="prompt") == served.usage.prompt_tokens
    assert value(samples, "releasegate_tokens_total", **who, kind="completion") == served.usage.completion_tokens
    assert value(samples, "releasegate_scope_violations_total", **who, rule="bounds.max_tokens") == 1
    assert value(samples, "releasegate_request_duration_seconds_count", **who) == 1  # only the forwarded one
    assert value(samples, "releasegate_request_duration_seconds_bucket", **who, le="60.0") == 1
    for phase in ("upstream", "gateway"):
        assert value(samples, "releasegate_request_phase_seconds_count", model=MODEL, version="v1", phase=phase) == 1
    up = value(samples, "releasegate_request_phase_seconds_sum", phase="upstream")
    total = value(samples, "releasegate_request_duration_seconds_sum")
    assert 0 < up <= total
    assert value(samples, "releasegate_snapshot_revision") == gateway[1].snapshot.revision  # type: ignore[union-attr]
    assert 0 <= value(samples, "releasegate_snapshot_age_seconds") < 60
    # Every code label comes from the closed set; no label carries what the client typed as the model.
    assert {ls["code"] for n, ls, _ in samples if n == "releasegate_requests_total"} <= CODES | {"none", "other"}
    assert {n for n, _, _ in scrape(url, "/gateway/metrics")} == {n for n, _, _ in samples}  # the old path still works
    # The durable log: the served request's start record was synced before it was forwarded.
    assert value(samples, "releasegate_request_log_records_total") >= 1
    assert 1 <= value(samples, "releasegate_request_log_batches_total") <= value(samples, "releasegate_request_log_records_total")
    assert value(samples, "releasegate_request_log_syncs_total") >= value(samples, "releasegate_request_log_batches_total")
    assert value(samples, "releasegate_request_log_write_failures_total") == 0
    assert value(samples, "releasegate_request_log_sync_seconds") > 0


def test_deployers_beyond_the_cap_are_counted_as_other(world: World, upstream: MockUpstream,
                                                       start_gateway: Callable[..., Any]) -> None:
    url, _service = start_gateway(world.ctx, metrics_max_deployers=1)
    sdk(url, world.key("acme-internal/customer-support")).chat.completions.create(**chat())
    for _ in range(2):  # bluebank (a trusted partner) is not in stage 'internal' yet: identified, then refused
        with pytest.raises(openai.PermissionDeniedError):
            sdk(url, world.key("bluebank/customer-support")).chat.completions.create(**chat())
    samples = scrape(url)
    by_deployer = {(ls["deployer"], ls["code"]): v for n, ls, v in samples if n == "releasegate_requests_total"}
    assert by_deployer == {(world.deployer_ids["acme-internal"], "none"): 1, ("other", "not_in_audience"): 2}


def test_a_thousand_deployers_make_a_bounded_number_of_series() -> None:
    metrics = GatewayMetrics(max_deployers=100)
    outcomes = (("allowed", None), ("denied", "rate_limited"), ("error", "upstream_error"))
    for i in range(1000):
        for outcome, code in outcomes:
            metrics.observe({"model_name": MODEL, "version": "v1", "stage": "limited-public", "use_case": "customer-support",
                             "deployer_id": f"dep_{i:04d}", "outcome": outcome, "reason_code": code,
                             "limit": "rpm" if code == "rate_limited" else None, "latency_ms": 3.0, "upstream_ms": 2.0,
                             "prompt_tokens": 5, "completion_tokens": 7})
        metrics.note_flag("moderation", {"deployer_id": f"dep_{i:04d}", "model_name": MODEL})
    families = {f.name: f for f in metrics.registry.collect()}
    deployers = {s.labels["deployer"] for s in families["releasegate_requests"].samples}
    assert len(deployers) == 101 and "other" in deployers  # 100 of their own + other
    # 101 deployers x 3 (outcome, code) pairs; tokens 101 x 2 kinds; latency (18 buckets + inf + count + sum) x 101.
    assert series_count(metrics.registry, ["releasegate_requests"]) == 101 * 3
    assert series_count(metrics.registry, ["releasegate_tokens"]) == 101 * 2
    assert series_count(metrics.registry, ["releasegate_request_duration_seconds"]) == 101 * 21
    assert series_count(metrics.registry, ["releasegate_rate_limit_denials"]) == 101
    assert series_count(metrics.registry, ["releasegate_flags"]) == 101
    # ... plus 2 phases x 21 and the 2 snapshot gauges: 2,872 series, where 1,000 own labels would make 28,044.
    assert series_count(metrics.registry) == 101 * (3 + 2 + 21 + 1 + 1) + 2 * 21 + 2
    samples = [(s.name, tuple(sorted(s.labels.items()))) for f in metrics.registry.collect() for s in f.samples]
    assert len(samples) == len(set(samples))  # no two samples share a name and label set
    other = sum(s.value for s in families["releasegate_requests"].samples if s.labels["deployer"] == "other")
    assert other == 900 * 3  # nothing is lost, only aggregated
    assert len(metrics.deployer) == 100  # the map of seen deployers stays bounded too


def test_unknown_codes_outcomes_and_limits_cannot_widen_the_label_sets() -> None:
    metrics = GatewayMetrics()
    for i in range(50):
        metrics.observe({"outcome": f"weird-{i}", "reason_code": f"made_up_{i}", "limit": f"limit-{i}",
                         "deployer_id": "dep_a"})
    samples = [s for f in metrics.registry.collect() for s in f.samples]
    requests = [s for s in samples if s.name == "releasegate_requests_total"]
    assert [(s.labels["outcome"], s.labels["code"], s.value) for s in requests] == [("other", "other", 50)]
    assert {s.labels["limit"] for s in samples if s.name == "releasegate_rate_limit_denials_total"} == set()


def test_two_apps_in_one_process_do_not_share_metrics(world: World, upstream: MockUpstream,
                                                      start_gateway: Callable[..., Any]) -> None:
    (one, a), (two, b) = start_gateway(world.ctx), start_gateway(world.ctx)
    assert a.metrics.registry is not b.metrics.registry
    sdk(one, world.key("acme-internal/customer-support")).chat.completions.create(**chat())
    count(b, {"outcome": "denied", "reason_code": "invalid_api_key"})
    note_flag(a, "moderation", {"deployer_id": world.deployer_ids["acme-internal"], "model_name": MODEL})
    first, second = scrape(one), scrape(two)
    assert value(first, "releasegate_requests_total", code="none") == 1
    assert value(first, "releasegate_requests_total", code="invalid_api_key") == 0
    assert value(first, "releasegate_flags_total", detector="moderation") == 1
    assert value(second, "releasegate_requests_total", code="none") == 0
    assert value(second, "releasegate_requests_total", code="invalid_api_key") == 1
    assert value(second, "releasegate_flags_total") == 0


def test_serve_exposes_both_planes_at_metrics(world: World, upstream: MockUpstream, tmp_path: Path) -> None:
    incidents.report(world.ctx, RM, MODEL, "v1", severity="low", title="metrics test: odd answers")
    app = create_server_app(world.ctx, request_log_dir=tmp_path / "log")
    try:
        with run_in_thread(app) as url:
            sdk(url, world.key("acme-internal/code-assistant")).chat.completions.create(**chat())
            samples = scrape(url)  # served by the gateway, not the admin API behind it
            assert value(samples, "releasegate_requests_total", use_case="code-assistant", code="none") == 1
            assert value(samples, "releasegate_store_up") == 1
            assert value(samples, "releasegate_versions", model=MODEL, state="active") == 2
            assert value(samples, "releasegate_version_stage", model=MODEL, version="v1", stage="internal",
                         state="active") == 1
            assert value(samples, "releasegate_incidents_open", model=MODEL, version="v1", stage="internal",
                         severity="low") == 1
            assert value(samples, "releasegate_incidents_total", model=MODEL, version="v1", severity="low") == 1
            assert value(scrape(url, "/gateway/metrics"), "releasegate_store_up") == 1
            assert httpx.get(url + "/api/v1/models").status_code == 401  # everything else still reaches the admin API
    finally:
        world.ctx.on_change.clear()


def test_every_metric_is_documented(world: World, tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    incidents.report(world.ctx, RM, MODEL, "v2", severity="medium", title="metrics docs test")
    metrics = GatewayMetrics()
    metrics.register(ControlPlaneCollector(world.ctx.db))
    metrics.observe({"outcome": "allowed", "latency_ms": 1.0, "upstream_ms": 0.5, "prompt_tokens": 1, "completion_tokens": 1})
    metrics.observe({"outcome": "denied", "reason_code": "scope_violation", "scope_violation": True, "rule": "endpoint"})
    metrics.observe({"outcome": "denied", "reason_code": "rate_limited", "limit": "rpm"})
    metrics.note_flag("moderation", {})
    metrics.register(RequestLogCollector(FileRequestLog(tmp_path, replica="r1"), RequestLogShipper(tmp_path, world.ctx.db)))
    names = {s.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
             for f in metrics.registry.collect() for s in f.samples}
    assert len(names) == 24, sorted(names)  # 9 of the gateway, 10 of its request log, 5 of the control plane
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"undocumented metrics: {missing}"
