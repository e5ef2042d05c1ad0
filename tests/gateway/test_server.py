"""``serve``: the gateway in front of the admin API in one process; control-plane writes reach it at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway_world import EXAMPLE, MODEL, RM, World, build_world, make_ctx, plan_text
from gateway_world import chat as chat_body
from processes import free_port
from releasegate.demo import DEMO_UPSTREAM_KEY_ENV, gateway_lines, start_mock_upstream
from releasegate.mockupstream import MockUpstream
from releasegate.server import create_server_app
from releasegate.services import rollouts
from releasegate.testing.server import run_in_thread


def test_serve_mounts_the_gateway_beside_the_admin_api(world: World, upstream: MockUpstream, tmp_path: Path) -> None:
    app = create_server_app(world.ctx, request_log_dir=tmp_path / "log")
    with run_in_thread(app) as url:
        assert httpx.get(url + "/healthz").json()["ok"] is True  # the admin API, behind the gateway
        assert httpx.get(url + "/api/v1/models").status_code == 401  # admin routes keep their own auth
        client = openai.OpenAI(base_url=url + "/v1", api_key=world.key("acme-internal/code-assistant"), max_retries=0)
        assert client.chat.completions.create(**chat_body(model=f"{MODEL}:v2")).choices
        # A write through the services refreshes this process's snapshot at once (no poll wait).
        rollouts.transition(world.ctx, RM, MODEL, "v2", "pause", reason="look at the canary")
        rollouts.transition(world.ctx, RM, MODEL, "v2", "halt", reason="canary misbehaves")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                client.chat.completions.create(**chat_body(model=f"{MODEL}:v2"))
            except openai.PermissionDeniedError as exc:
                assert exc.code == "version_halted"
                break
            assert time.monotonic() < deadline
        rollouts.transition(world.ctx, RM, MODEL, "v2", "resume", reason="fixed")
    world.ctx.on_change.clear()


def test_demo_lines_work_as_printed(world: World, upstream: MockUpstream, tmp_path: Path) -> None:
    key = world.key("acme-internal/customer-support")
    app = create_server_app(world.ctx, request_log_dir=tmp_path / "log")
    with run_in_thread(app) as url:
        lines = gateway_lines(url, MODEL, [{"deployer": "acme-internal", "use_case": "customer-support", "key": key}])
        assert any("MOCK" in line for line in lines)
        start = lines.index("  python - <<'EOF'")
        snippet = "\n".join(line.strip() for line in lines[start + 1:lines.index("  EOF")])
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "[mock atlas-8b" in out.stdout
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        if shutil.which("curl"):
            got = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
            assert '"chat.completion"' in got.stdout, got.stdout + got.stderr
    world.ctx.on_change.clear()


def test_every_version_of_the_example_plan_answers_through_the_demo_mock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's mock refuses requests without the upstream key the example plan names: every version
    must name it (v2 did not, so a demo deployer the weighted split sent to v2 got a 502)."""
    monkeypatch.setenv(DEMO_UPSTREAM_KEY_ENV, "sk-demo-test")
    port = free_port()
    mock = start_mock_upstream(port)
    assert mock is not None
    ctx = make_ctx(f"sqlite:///{tmp_path / 'rg.db'}", tmp_path / "data")
    try:
        world = build_world(ctx, plan_text(EXAMPLE.read_text(), f"http://127.0.0.1:{port}/v1"))
        app = create_server_app(world.ctx, request_log_dir=tmp_path / "log")
        with run_in_thread(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=world.key("acme-internal/code-assistant"), max_retries=0)
            for version in ("v1", "v2"):
                answer = client.chat.completions.create(**chat_body(model=f"{MODEL}:{version}"))
                assert answer.choices[0].message.content.startswith(f"[mock atlas-8b-{version}]")
    finally:
        mock.stop()
        ctx.db.dispose()
