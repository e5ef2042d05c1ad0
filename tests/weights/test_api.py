"""The weights REST API (/api/v1/weights): registration limits, requests and terms over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from releasegate.api.app import create_app
from releasegate.services import principals
from releasegate.services.context import Actor
from releasegate.testing.server import run_in_thread
from weights_world import GOOD_FIELDS, MODEL, World

ADMIN = Actor(name="admin", role="admin")


@pytest.fixture
def api(world: World) -> Iterator[str]:
    with run_in_thread(create_app(ctx=world.ctx)) as url:
        yield url + "/api/v1/weights"


def _bearer(world: World, name: str, role: str, email: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + principals.create(world.ctx, ADMIN, name=name, role=role, email=email)["token"]}


def test_register_only_the_plans_path_over_http(world: World, api: str) -> None:
    rm = _bearer(world, "rm", "release_manager", "rm@acme.example")
    r = httpx.post(f"{api}/{MODEL}/register", json={"version": "v1", "path": "/etc"}, headers=rm)
    assert r.status_code == 422 and r.json()["error"]["code"] == "path_not_allowed"
    r = httpx.post(f"{api}/{MODEL}/register", json={"version": "v1"}, headers=rm)
    assert r.status_code == 201 and r.json()["commit"] == world.commit and r.json()["changed"] is False
    lic = _bearer(world, "lic", "licensee", "lic@uni.edu")
    assert httpx.post(f"{api}/{MODEL}/register", json={"version": "v1"}, headers=lic).status_code == 403


def test_request_terms_and_status_over_http(world: World, api: str) -> None:
    lic = _bearer(world, "lic", "licensee", "lic@uni.edu")
    r = httpx.post(f"{api}/{MODEL}/requests", json={"fields": {**GOOD_FIELDS, "country": "ZZ"}, "declared_use": "x"}, headers=lic)
    assert r.status_code == 422 and r.json()["error"]["details"]["problems"][0]["field"] == "country"
    r = httpx.post(f"{api}/{MODEL}/requests", json={"fields": GOOD_FIELDS, "declared_use": "research"}, headers=lic)
    assert r.status_code == 201 and r.json()["status"] == "approved"
    assert httpx.get(f"{api}/{MODEL}/access", headers=lic).json()["code"] == "terms_not_accepted"
    terms = httpx.get(f"{api}/{MODEL}/terms", headers=lic).json()
    assert terms["version"] == 1 and terms["accepted"] is False and terms["text"].startswith("# Atlas license")
    r = httpx.post(f"{api}/{MODEL}/terms/accept", json={"version": 1, "content_hash": terms["content_hash"]},
                   headers={**lic, "User-Agent": "curl/8"})
    assert r.status_code == 201 and r.json()["ip"] == "127.0.0.1"
    assert httpx.get(f"{api}/{MODEL}/access", headers=lic).json()["ok"] is True
    assert httpx.get(f"{api}/acme/unknown/terms", headers=lic).status_code == 404
