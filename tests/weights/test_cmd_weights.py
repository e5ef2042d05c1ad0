"""The licensee journey from the command line: request, review, accept terms, ``hf download``; and ``trace``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download
from typer.testing import CliRunner

from releasegate.api.app import create_app
from releasegate.cli.main import build_app
from releasegate.cli.state import CliState
from releasegate.plan.loader import load_plan_file
from releasegate.services import plans, principals, rollouts
from releasegate.services.context import Actor
from releasegate.testing.server import run_in_thread
from releasegate.weights import access, terms
from weights_world import GOOD_FIELDS, MODEL, PLAN, RM, TERMS_V1, World, write_weights

ADMIN = Actor(name="admin", role="admin")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only here: these tests are about the command lines; the store is covered on both backends elsewhere."""
    return f"sqlite:///{tmp_path / 'releasegate.db'}"


@pytest.fixture
def server(world: World) -> Iterator[str]:
    with run_in_thread(create_app(ctx=world.ctx)) as url:
        yield url


def rg(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def hf(args: list[str], *, endpoint: str, token: str, home: Path, debug: bool = False) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hf")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "huggingface_hub.cli.hf", *args]
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DEBUG": "1" if debug else ""}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_request_review_accept_and_hf_download(world: World, server: str, tmp_path: Path) -> None:
    lic = principals.create(world.ctx, ADMIN, name="lee", role="licensee", email="lee@example.org")["token"]
    rev = principals.create(world.ctx, ADMIN, name="rita", role="reviewer", email="rita@acme.example")["token"]
    as_lee, as_rita = ["--server", server, "--token", lic], ["--server", server, "--token", rev]
    code, out = rg(*as_lee, "weights", "request", MODEL, "--field", "organisation=Example Lab", "--field", "country=de",
                   "--field", "agree_no_redistribution=yes", "--field", "start_date=2026-02-30", "--use", "evals", "--json")
    assert code == 2 and "start_date is not a real calendar date" in out
    code, out = rg(*as_lee, "weights", "request", MODEL, "--field", "organisation=Example Lab", "--field", "country=de",
                   "--field", "agree_no_redistribution=yes", "--use", "safety evals", "--json")
    assert code == 0, out
    req = json.loads(out)
    assert req["status"] == "pending" and req["fields"]["country"] == "DE"
    code, out = rg(*as_lee, "weights", "requests", "--status", "pending", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [req["id"]]  # a licensee sees its own
    code, out = rg(*as_rita, "weights", "requests", "--status", "pending", "--json")
    assert code == 0 and req["id"] in out
    code, out = rg(*as_lee, "weights", "approve", req["id"])
    assert code == 1 and "forbidden_role" in out
    code, out = rg(*as_rita, "weights", "approve", req["id"], "--json")
    assert code == 0 and json.loads(out)["status"] == "approved" and json.loads(out)["expires_at"].startswith("2026-01-31")
    r = hf(["download", MODEL, "config.json"], endpoint=server, token=lic, home=tmp_path / "h1")
    assert r.returncode != 0 and "requires approval" in r.stderr  # all `hf` says; our reason is in its debug output
    r = hf(["download", MODEL, "config.json"], endpoint=server, token=lic, home=tmp_path / "h1", debug=True)
    assert "Accept the terms of acme/atlas-8b (version 1)" in r.stderr
    code, out = rg(*as_lee, "weights", "status", MODEL, "--json")
    assert code == 0 and json.loads(out)["code"] == "terms_not_accepted" and "accept-terms" in json.loads(out)["message"]
    code, out = rg(*as_lee, "weights", "terms", MODEL, "--json")
    assert code == 0 and json.loads(out)["accepted"] is False and json.loads(out)["version"] == 1
    code, out = rg(*as_lee, "weights", "accept-terms", MODEL, "--version", "1")
    assert code == 0, out
    r = hf(["download", MODEL, "--local-dir", str(tmp_path / "out")], endpoint=server, token=lic, home=tmp_path / "h2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "config.json").read_bytes() == (world.plan_dir / "artifacts/v1/config.json").read_bytes()
    assert (tmp_path / "out" / "model.safetensors").stat().st_size == (world.plan_dir / "artifacts/v1/model.safetensors").stat().st_size
    code, out = rg(*as_rita, "weights", "revoke", req["id"], "--reason", "")
    assert code == 2 and "reason_required" in out
    code, out = rg(*as_rita, "weights", "revoke", req["id"], "--reason", "left the lab")
    assert code == 0
    r = hf(["download", MODEL, "config.json", "--force-download"], endpoint=server, token=lic, home=tmp_path / "h3", debug=True)
    assert r.returncode != 0 and "left the lab" in r.stderr


def test_trace_names_the_licensee_a_leak_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("RELEASEGATE_ACTOR", "alice@acme.example")
    code, out = rg("--data-dir", str(data), "init")
    assert code == 0, out
    ctx = CliState(data_dir=data).service_context()
    d = tmp_path / "plan"
    (d / "terms").mkdir(parents=True)
    (d / "plan.yaml").write_text(PLAN)
    (d / "terms" / "license.md").write_text(TERMS_V1)
    write_weights(d / "artifacts" / "v1", seed=7)
    plans.apply(ctx, ADMIN, load_plan_file(d / "plan.yaml"))
    code, out = rg("--data-dir", str(data), "weights", "register", MODEL, "v1", "--json")
    assert code == 0 and json.loads(out)["files"] == 3, out
    code, out = rg("--data-dir", str(data), "weights", "publish-terms", MODEL, "--json")
    assert code == 0 and json.loads(out)[0]["version"] == 1
    for reason in ("internal", "open weights"):
        rollouts.transition(ctx, RM, MODEL, "v1", "promote", reason=reason)
    world = World(ctx=ctx, plan_dir=d, commit="")
    copies = {}
    with run_in_thread(create_app(ctx=ctx)) as url:
        for name in ("ana", "ben", "cat"):
            token, actor = world.licensee(name, f"{name}@uni.edu")
            access.submit(ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="research")
            terms.accept(ctx, actor, MODEL)
            copies[name] = hf_hub_download(MODEL, "model.safetensors", cache_dir=tmp_path / name, endpoint=url, token=token)
    code, out = rg("--data-dir", str(data), "trace", copies["ben"], "--model", MODEL, "--version", "v1", "--json")
    assert code == 0, out
    verdict = json.loads(out)
    assert verdict["licensee_name"] == "ben" and verdict["confidence"] > 0.999999 and verdict["candidates"] == 3
    assert verdict["runner_up_score"] < verdict["threshold"]
    code, out = rg("--data-dir", str(data), "trace", str(d / "artifacts/v1/model.safetensors"), "--model", MODEL,
                   "--version", "v1", "--json")
    assert code == 0 and json.loads(out)["licensee"] is None  # the clean original carries nobody's mark
