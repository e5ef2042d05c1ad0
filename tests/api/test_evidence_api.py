"""The evidence, incident, approval and gate routes over HTTP, with real tokens."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient

from releasegate.api.app import create_app
from releasegate.services import principals, rollouts
from releasegate.services.context import Actor, ServiceContext
from support import MODEL, admitted_deployer, apply_text


def test_evidence_incidents_approvals_and_gates(ctx: ServiceContext, example_plan_text: str) -> None:
    root = Actor(name="root", role="admin")
    apply_text(ctx, root, example_plan_text)
    rollouts.transition(ctx, root, MODEL, "v1", "promote", reason="internal")
    mine = admitted_deployer(ctx, "mine", "internal", ["customer-support"])
    other = admitted_deployer(ctx, "other", "internal", ["customer-support"])

    def token(name: str, role: str, email: str | None = None, deployer: str | None = None) -> dict[str, str]:
        t = principals.create(ctx, root, name=name, role=role, email=email, deployer=deployer)
        return {"Authorization": f"Bearer {t['token']}"}

    rm = token("rm", "release_manager", "bob@acme.example")
    alice = token("alice", "reviewer", "alice@acme.example")
    dep = token("mine-bot", "deployer", deployer=mine["id"])
    client = TestClient(create_app(ctx=ctx))

    body = {"model": "atlas-8b-v1", "results": [{"suite": "cyber-uplift", "metric": "accuracy", "value": 0.1}]}
    upload = {"model": MODEL, "version": "v1", "filename": "../../etc/evals.json",
              "content_base64": base64.b64encode(json.dumps(body).encode()).decode()}
    r = client.post("/api/v1/evidence", json=upload, headers=rm)
    assert r.status_code == 201, r.text
    assert r.json()["source_name"] == "evals.json"
    assert client.post("/api/v1/evidence", json=upload, headers=rm).json()["error"]["code"] == "evidence_duplicate"
    assert client.post("/api/v1/evidence", json={**upload, "content_base64": "%%%"}, headers=rm).status_code == 422
    assert client.post("/api/v1/evidence", json=upload, headers=dep).status_code == 403
    assert client.get("/api/v1/evidence", params={"model": MODEL}, headers=alice).json()["results"][0]["value"] == 0.1

    r = client.post("/api/v1/incidents", json={"model": MODEL, "version": "v1", "severity": "high", "title": "leak"}, headers=dep)
    assert r.status_code == 201 and r.json()["deployer_id"] == mine["id"]
    spoof = {"model": MODEL, "version": "v1", "severity": "high", "title": "x", "deployer": other["id"]}
    assert client.post("/api/v1/incidents", json=spoof, headers=dep).status_code == 404
    client.post("/api/v1/incidents", json={**spoof, "title": "staff"}, headers=rm)
    assert [i["title"] for i in client.get("/api/v1/incidents", headers=dep).json()] == ["leak"]
    assert len(client.get("/api/v1/incidents", headers=rm).json()) == 2
    inc = r.json()["id"]
    assert client.post(f"/api/v1/incidents/{inc}/status", json={"status": "triaged", "reason": "x"}, headers=dep).status_code == 403
    assert client.post(f"/api/v1/incidents/{inc}/status", json={"status": "closed", "reason": "dup"}, headers=rm).json()["status"] == "closed"

    stage = {"model": MODEL, "version": "v1", "stage": "trusted-partners"}
    assert client.post("/api/v1/promotion-requests", json=stage, headers=rm).status_code == 201
    assert client.post("/api/v1/approvals", json=stage, headers=rm).json()["error"]["code"] == "requester_cannot_approve"
    assert client.post("/api/v1/approvals", json=stage, headers=alice).status_code == 201
    assert client.post("/api/v1/approvals", json=stage, headers=dep).status_code == 403
    assert [a["approver"] for a in client.get("/api/v1/approvals", params={"model": MODEL}, headers=alice).json()] == ["alice@acme.example"]

    rows = client.get("/api/v1/gates", params={"model": MODEL}, headers=alice).json()
    results = {r["kind"]: r["outcome"] for r in rows[0]["verdict"]["results"] if r["kind"] != "eval"}
    assert results == {"time_in_stage": "fail", "findings": "pass", "approvals": "fail"}
    assert client.get("/api/v1/gates", params={"model": MODEL}, headers=dep).status_code == 403
