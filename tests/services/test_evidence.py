"""Importing evidence: bound to one version, never twice, refused when the log names another version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from releasegate.errors import Forbidden, InvalidInput, NotFound, Refused
from releasegate.services import audit, evidence
from releasegate.services.context import Actor, ServiceContext

FIXTURES = Path(__file__).resolve().parent.parent / "evidence" / "fixtures"


def write(tmp_path: Path, name: str, data: dict[str, object]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_import_generic_json_stores_results_and_findings(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    out = evidence.import_evidence(ctx, admin, FIXTURES / "generic_evidence.json", atlas, "v1",
                                   log_models=("atlas-7b-2025-06", "atlas-7b-2025-06-rc2"))
    assert out["results"] == 3 and out["findings"] == 2 and out["source_format"] == "generic_json"
    listed = evidence.list_evidence(ctx, admin, atlas, "v1")
    assert {r["suite"] for r in listed["results"]} == {"cyber-uplift", "refusals"}
    assert {r["source_sha256"] for r in listed["results"]} == {out["source_sha256"]}
    assert {f["severity"]: f["status"] for f in listed["findings"]} == {"high": "mitigated", "low": "open"}
    assert evidence.list_evidence(ctx, admin, atlas, "v2")["results"] == []
    entry = audit.list_entries(ctx, admin, target=f"version:{atlas}:v1")[0]
    assert entry["action"] == "evidence.import" and entry["changes"]["source_sha256"] == out["source_sha256"]


def test_same_bytes_are_refused_the_second_time(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    evidence.import_evidence(ctx, admin, FIXTURES / "lm_eval_results.json", atlas, "v1", log_models=("EleutherAI/pythia-160m",))
    with pytest.raises(Refused) as exc:
        evidence.import_evidence(ctx, admin, FIXTURES / "lm_eval_results.json", atlas, "v2", log_models=("EleutherAI/pythia-160m",))
    assert exc.value.code == "evidence_duplicate"
    assert evidence.list_evidence(ctx, admin, atlas, "v2")["imports"] == []


def test_log_naming_another_version_is_refused(ctx: ServiceContext, admin: Actor, atlas: str, tmp_path: Path) -> None:
    path = write(tmp_path, "run.json", {"model": "atlas-8b-v2", "results": [{"suite": "s", "metric": "m", "value": 1}]})
    with pytest.raises(Refused) as exc:
        evidence.import_evidence(ctx, admin, path, atlas, "v1")
    assert exc.value.code == "evidence_version_mismatch" and "'v2'" in exc.value.message
    assert evidence.import_evidence(ctx, admin, path, atlas, "v2")["results"] == 1


def test_log_naming_an_unknown_model_needs_an_explicit_mapping(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    with pytest.raises(Refused) as exc:
        evidence.import_evidence(ctx, admin, FIXTURES / "inspect_success.json", atlas, "v1")
    assert exc.value.code == "evidence_model_unknown" and "--log-model" in exc.value.message
    out = evidence.import_evidence(ctx, admin, FIXTURES / "inspect_success.json", atlas, "v1", log_models=("mockllm/model",))
    assert out["source_format"] == "inspect_ai" and out["results"] == 2


def test_unnamed_model_is_accepted_with_a_warning(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    out = evidence.import_evidence(ctx, admin, FIXTURES / "generic_findings.csv", atlas, "v1")
    assert out["findings"] == 3 and any("do not name a model" in w for w in out["warnings"])


def test_refusals(ctx: ServiceContext, admin: Actor, atlas: str, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as nf:
        evidence.import_evidence(ctx, admin, FIXTURES / "generic_results.csv", atlas, "v9")
    assert nf.value.code == "version_not_found"
    with pytest.raises(NotFound):
        evidence.import_evidence(ctx, admin, FIXTURES / "generic_results.csv", "acme/nope", "v1")
    with pytest.raises(InvalidInput) as bad:
        evidence.import_evidence(ctx, admin, FIXTURES / "inspect_error.json", atlas, "v1")
    assert "did not succeed" in bad.value.message
    with pytest.raises(Forbidden):
        evidence.import_evidence(ctx, Actor("d", "deployer", deployer_id="dep_x"), FIXTURES / "generic_results.csv", atlas, "v1")
    assert evidence.list_evidence(ctx, admin, atlas)["imports"] == []


def test_finding_status_update_is_audited(ctx: ServiceContext, admin: Actor, atlas: str) -> None:
    evidence.import_evidence(ctx, admin, FIXTURES / "generic_findings.csv", atlas, "v1")
    critical = next(f for f in evidence.list_evidence(ctx, admin, atlas)["findings"] if f["severity"] == "critical")
    out = evidence.update_finding(ctx, admin, critical["id"], "mitigated", reason="allow-list enforced at the proxy")
    assert out["status"] == "mitigated"
    with pytest.raises(Refused):
        evidence.update_finding(ctx, admin, critical["id"], "mitigated", reason="again")
    with pytest.raises(InvalidInput):
        evidence.update_finding(ctx, admin, critical["id"], "fixed", reason="x")
    assert audit.list_entries(ctx, admin, target=f"finding:{critical['id']}")[0]["changes"]["to"] == "mitigated"
