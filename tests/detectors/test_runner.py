"""The runner: off the hot path on a bounded queue, one flags record per request, inline checks, rebuilds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from releasegate.detectors.base import (
    DetectionInput,
    Detector,
    DetectorRegistry,
    DetectorUnavailable,
    Flag,
)
from releasegate.detectors.runner import DetectorRunner
from releasegate.gateway.requestlog import FileRequestLog, written_part


class Scripted(Detector):
    """Flags 'bad', cannot judge 'down', hangs on 'hang' (until released), passes the rest."""

    instances: list[Scripted] = []

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.release = asyncio.Event()
        self.closed = False
        self.seen: list[DetectionInput] = []
        Scripted.instances.append(self)

    async def inspect(self, item: DetectionInput) -> Flag | None:
        self.seen.append(item)
        if "hang" in item.input_text:
            await self.release.wait()
        if "down" in item.input_text:
            raise DetectorUnavailable("backend down")
        if "bad" in item.input_text or "bad" in (item.output_text or ""):
            return Flag(self.name, "bad", 0.9, "said bad")
        return None

    async def aclose(self) -> None:
        self.closed = True


def registry() -> DetectorRegistry:
    r = DetectorRegistry()
    r.register("scripted", Scripted)
    return r


def item(rid: str, text: str, output: str | None = None) -> DetectionInput:
    return DetectionInput(request_id=rid, deployer_id="dep_1", use_case="support", use_case_description="Support.",
                          model="acme/atlas-8b", version="v1", endpoint="chat.completions", input_text=text,
                          output_text=output)


def records(directory: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for p in sorted(directory.glob("*.jsonl")) for line in written_part(p.read_bytes()).splitlines()]


PLAN = {"acme/atlas-8b": ({"a": {"kind": "scripted"}, "b": {"kind": "scripted"},
                           "gate": {"kind": "scripted", "mode": "inline"}}, {"support": "Support."})}


async def test_async_findings_become_one_flags_record_per_request(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    counted: list[tuple[str, Any]] = []
    runner = DetectorRunner(rlog, registry=registry(), on_flag=lambda d, rec: counted.append((d, rec["stage"])))
    await runner.start()
    await runner.configure(PLAN)
    entry = runner.models["acme/atlas-8b"]
    assert [c.name for c in entry.asynchronous] == ["a", "b"] and [c.name for c in entry.inline] == ["gate"]
    runner.submit(item("req_ok", "hello"), entry.asynchronous, {"stage": "pilot"})
    runner.submit(item("req_bad", "hello", output="bad answer"), entry.asynchronous, {"stage": "pilot"})
    runner.submit(item("req_down", "down"), entry.asynchronous, {"stage": "pilot"})
    await runner.stop()
    await rlog.close()
    got = [(r["id"], r["kind"], r["flags"], r.get("detector_errors")) for r in records(tmp_path)]
    flag = {"category": "bad", "score": 0.9, "detail": "said bad"}
    assert got == [("req_bad", "flags", {"a": flag, "b": flag}, None),
                   ("req_down", "flags", {}, {"a": "backend down", "b": "backend down"})]
    assert counted == [("a", "pilot"), ("b", "pilot")]
    assert runner.stats.flags == {"a": 1, "b": 1} and runner.stats.errors == {"a": 1, "b": 1}
    assert all(d.closed for d in Scripted.instances[-3:])


async def test_submit_never_waits_and_counts_what_it_drops(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    runner = DetectorRunner(rlog, registry=registry(), workers=1, queue_size=2)
    await runner.start()
    await runner.configure({"m": ({"a": {"kind": "scripted"}}, {})})
    detectors = runner.models["m"].asynchronous
    hanging: Scripted = detectors[0].detector  # type: ignore[assignment]
    runner.submit(item("req_0", "hang"), detectors)
    await asyncio.sleep(0.05)  # the worker holds req_0; two more fit in the queue
    for i in range(1, 6):
        runner.submit(item(f"req_{i}", "hang"), detectors)
    assert runner.stats.submitted == 3 and runner.stats.dropped == 3
    hanging.release.set()
    await runner.stop()
    await rlog.close()
    assert [i.request_id for i in hanging.seen] == ["req_0", "req_1", "req_2"]


async def test_inline_checks_return_findings_and_time_out_as_errors(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    runner = DetectorRunner(rlog, registry=registry(), timeout=0.2)
    await runner.start()
    await runner.configure(PLAN)
    inline = runner.models["acme/atlas-8b"].inline
    assert await runner.inspect_inline(item("req_1", "hello"), inline) == ({}, {})
    flags, errors = await runner.inspect_inline(item("req_2", "bad"), inline)
    assert flags == {"gate": {"category": "bad", "score": 0.9, "detail": "said bad"}} and errors == {}
    assert await runner.inspect_inline(item("req_3", "hang"), inline) == ({}, {"gate": "no answer within 0.2s"})
    await runner.stop()
    await rlog.close()
    assert records(tmp_path) == []  # inline findings go on the gateway's own end record


async def test_configure_keeps_unchanged_detectors_and_marks_broken_ones(tmp_path: Path) -> None:
    rlog = FileRequestLog(tmp_path, replica="r1")
    runner = DetectorRunner(rlog, registry=registry())
    await runner.start()
    await runner.configure(PLAN)
    before = runner.models["acme/atlas-8b"]
    await runner.configure(dict(PLAN))
    assert runner.models["acme/atlas-8b"] is before  # nothing changed: loaded models stay loaded
    await runner.configure({"acme/atlas-8b": ({"a": {"kind": "scripted", "sample": 0.5},
                                               "typo": {"kind": "scriptd", "mode": "inline"}}, {})})
    after = runner.models["acme/atlas-8b"]
    assert all(c.detector.closed for c in before.all())  # type: ignore[attr-defined]
    assert after.asynchronous[0].sample == 0.5
    broken = after.inline[0]
    assert broken.name == "typo" and broken.mode == "inline"
    _, errors = await runner.inspect_inline(item("req_1", "hello"), after.inline)
    assert "unknown kind 'scriptd'" in errors["typo"]  # fails closed: an inline detector that never judges
    await runner.configure({})
    assert runner.models == {}
    await runner.stop()
    await rlog.close()
