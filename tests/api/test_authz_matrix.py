"""Every admin-API route × every role: who may, who is refused, and what a deployer can see."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from releasegate.api.app import create_app
from releasegate.services import applications, deployers, keys, principals
from releasegate.services.context import Actor, ServiceContext
from support import MODEL, REVIEWER, admitted_deployer, apply_text

ROLES = ["admin", "release_manager", "reviewer", "auditor", "deployer"]
OK = {200, 201}


class World:
    def __init__(self, ctx: ServiceContext, plan_text: str) -> None:
        root = Actor(name="root", role="admin")
        apply_text(ctx, root, plan_text)
        from releasegate.services import rollouts

        rollouts.transition(ctx, root, MODEL, "v1", "promote", reason="start")
        self.plan_text = plan_text
        self.mine = admitted_deployer(ctx, "mine", "trusted-partner", ["customer-support"])
        self.other = admitted_deployer(ctx, "other", "trusted-partner", ["customer-support"])
        self.other_key = keys.issue(ctx, REVIEWER, deployer=self.other["id"], model=MODEL, use_case="customer-support")
        self.other_app = applications.submit(ctx, REVIEWER, deployer=self.other["id"], model=MODEL, use_cases=["code-assistant"])
        pending = deployers.create(ctx, REVIEWER, name="pending-co")
        self.pending_app = applications.submit(ctx, REVIEWER, deployer=pending["id"], model=MODEL, use_cases=["code-assistant"])
        self.tokens: dict[str, str] = {}
        for role in ROLES:
            t = principals.create(ctx, root, name=f"{role}-token", role=role, deployer=self.mine["id"] if role == "deployer" else None)
            self.tokens[role] = t["token"]


def expected(role: str, allowed: set[str], deployer: int | None = None) -> set[int] | int:
    if role == "admin" or role in allowed:
        return OK
    if role == "deployer" and deployer is not None:
        return deployer
    return 403


def routes(w: World, role: str) -> list[tuple[str, str, dict[str, Any] | None, set[int] | int]]:
    other, mine = w.other["id"], w.mine["id"]
    plan = {"text": w.plan_text, "source": "plan.yaml"}
    staff_read = {"release_manager", "reviewer", "auditor"}
    return [
        ("POST", "/api/v1/plans/validate", plan, expected(role, staff_read)),
        ("POST", "/api/v1/plans/diff", plan, expected(role, staff_read)),
        ("POST", "/api/v1/plans/apply", plan, expected(role, {"release_manager"})),
        ("GET", "/api/v1/models", None, expected(role, staff_read)),
        ("GET", f"/api/v1/models/{MODEL}", None, expected(role, staff_read)),
        ("GET", f"/api/v1/models/{MODEL}/plan", None, expected(role, staff_read)),
        ("GET", f"/api/v1/models/{MODEL}/plan/history", None, expected(role, staff_read)),
        ("GET", f"/api/v1/models/{MODEL}/versions/v1/history", None, expected(role, staff_read)),
        ("POST", f"/api/v1/models/{MODEL}/versions/v1/halt", {"reason": "drill"}, expected(role, {"release_manager"})),
        ("POST", f"/api/v1/models/{MODEL}/aliases/atlas/retarget", {"targets": {"v1": 100}, "reason": "x"}, expected(role, {"release_manager"})),
        ("POST", "/api/v1/deployers", {"name": f"new-{role.replace('_', '-')}"}, expected(role, {"reviewer"})),
        ("GET", "/api/v1/deployers", None, expected(role, staff_read | {"deployer"})),
        ("GET", f"/api/v1/deployers/{other}", None, expected(role, staff_read, deployer=404)),
        ("GET", f"/api/v1/deployers/{mine}", None, expected(role, staff_read | {"deployer"})),
        ("POST", f"/api/v1/deployers/{other}/members", {"email": f"{role}@x.example"}, expected(role, {"reviewer"}, deployer=404)),
        ("POST", f"/api/v1/deployers/{mine}/members", {"email": f"{role}2@x.example"}, expected(role, {"reviewer", "deployer"})),
        ("POST", "/api/v1/applications", {"deployer": other, "model": MODEL, "use_cases": ["customer-support"]}, 409 if role in ("admin", "reviewer") else expected(role, {"reviewer"}, deployer=404)),
        ("GET", "/api/v1/applications", None, expected(role, staff_read | {"deployer"})),
        ("GET", f"/api/v1/applications/{w.other_app['id']}", None, expected(role, staff_read, deployer=404)),
        ("POST", f"/api/v1/applications/{w.pending_app['id']}/reject", {"reason": "no"}, expected(role, {"reviewer"})),
        ("POST", "/api/v1/keys", {"deployer": other, "model": MODEL, "use_case": "customer-support"}, expected(role, {"reviewer"}, deployer=404)),
        ("POST", "/api/v1/keys", {"deployer": mine, "model": MODEL, "use_case": "customer-support"}, expected(role, {"reviewer", "deployer"})),
        ("GET", "/api/v1/keys", None, expected(role, staff_read | {"deployer"})),
        ("POST", f"/api/v1/keys/{w.other_key['id']}/rotate", {"grace_hours": 1}, expected(role, {"reviewer"}, deployer=404)),
        ("POST", f"/api/v1/keys/{w.other_key['id']}/revoke", {"reason": "x"}, expected(role, {"reviewer", "release_manager"}, deployer=404)),
        ("POST", f"/api/v1/deployers/{other}/status", {"status": "suspended", "reason": "test"}, expected(role, {"reviewer", "release_manager"})),
        ("GET", "/api/v1/audit", None, expected(role, staff_read)),
        ("GET", "/api/v1/audit/verify", None, expected(role, {"release_manager", "auditor"})),
        ("POST", "/api/v1/audit/checkpoint", None, expected(role, {"release_manager", "auditor"})),
        ("POST", "/api/v1/tokens", {"name": f"t-{role}", "role": "auditor"}, expected(role, set())),
        ("GET", "/api/v1/tokens", None, expected(role, {"auditor"})),
        ("GET", "/api/v1/me", None, OK),
    ]


@pytest.mark.parametrize("role", ROLES)
def test_role_route_matrix(ctx: ServiceContext, example_plan_text: str, role: str) -> None:
    w = World(ctx, example_plan_text)
    client = TestClient(create_app(ctx=ctx))
    headers = {"Authorization": f"Bearer {w.tokens[role]}"}
    failures = []
    for method, path, body, want in routes(w, role):
        resp = client.request(method, path, json=body, headers=headers)
        ok = resp.status_code in want if isinstance(want, set) else resp.status_code == want
        if not ok:
            failures.append(f"{role} {method} {path}: got {resp.status_code} {resp.text[:160]}, want {want}")
        if resp.status_code >= 400:
            err = resp.json()["error"]
            assert set(err) == {"code", "message", "details"} and err["code"] and err["message"]
    assert not failures, "\n".join(failures)


def test_deployer_lists_only_its_own(ctx: ServiceContext, example_plan_text: str) -> None:
    w = World(ctx, example_plan_text)
    client = TestClient(create_app(ctx=ctx))
    h = {"Authorization": f"Bearer {w.tokens['deployer']}"}
    assert [d["id"] for d in client.get("/api/v1/deployers", headers=h).json()] == [w.mine["id"]]
    assert all(k["deployer_id"] == w.mine["id"] for k in client.get("/api/v1/keys", headers=h).json())
    assert all(a["deployer_id"] == w.mine["id"] for a in client.get("/api/v1/applications", headers=h).json())


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "Bearer rgt_" + "A" * 50])
def test_bad_credentials_get_401(ctx: ServiceContext, header: str | None) -> None:
    client = TestClient(create_app(ctx=ctx))
    resp = client.get("/api/v1/models", headers={"Authorization": header} if header else {})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["error"]["code"] in ("missing_token", "invalid_token")


def test_validation_errors_have_the_one_shape(ctx: ServiceContext) -> None:
    boot = principals.bootstrap_admin(ctx)
    assert boot is not None
    client = TestClient(create_app(ctx=ctx))
    h = {"Authorization": f"Bearer {boot['token']}"}
    resp = client.post("/api/v1/deployers", json={"nam": "x"}, headers=h)
    assert resp.status_code == 422
    body = resp.json()["error"]
    assert body["code"] == "invalid_input" and body["details"]["problems"][0]["field"] == "name"
    resp = client.post("/api/v1/plans/validate", json={"text": "model: [unclosed", "source": "p.yaml"}, headers=h)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "plan_invalid"
    resp = client.post(f"/api/v1/models/{MODEL}/versions/v1/launch", json={"reason": "x"}, headers=h)
    assert resp.status_code == 422
