"""`serve` runs the controller in the background: a critical incident halts the version by itself."""

from __future__ import annotations

import time
from pathlib import Path

from releasegate.clock import SystemClock
from releasegate.server import create_server_app
from releasegate.services import incidents, rollouts
from releasegate.services.context import Actor, ServiceContext
from releasegate.testing.server import run_in_thread
from support import MODEL, apply_text


def test_serve_runs_the_controller(ctx: ServiceContext, admin: Actor, example_plan_text: str, tmp_path: Path) -> None:
    live = ServiceContext(db=ctx.db, settings=ctx.settings.model_copy(update={"controller_interval": 0.2}), clock=SystemClock())
    apply_text(live, admin, example_plan_text)
    rollouts.transition(live, admin, MODEL, "v1", "promote", reason="start")
    rollouts.transition(live, admin, MODEL, "v1", "promote", reason="partners", override_reason="test")
    incidents.report(live, admin, MODEL, "v1", severity="critical", title="jailbreak in the wild")
    with run_in_thread(create_server_app(live, request_log_dir=tmp_path / "log")):
        deadline = time.monotonic() + 15
        state = None
        while time.monotonic() < deadline:
            state = next(r for r in rollouts.status(live, admin, MODEL) if r.get("version") == "v1")["state"]
            if state == "halted":
                break
            time.sleep(0.1)
    assert state == "halted"
    last = rollouts.history(live, admin, MODEL, "v1")[-1]
    assert last["actor"] == "controller" and "critical" in last["reason"]


