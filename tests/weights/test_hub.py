"""The real ``huggingface_hub`` against releasegate on loopback: gating, terms, signed URLs, audit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from releasegate.api.app import create_app
from releasegate.plan.loader import load_plan_file
from releasegate.services import audit, plans, rollouts
from releasegate.services.context import Actor
from releasegate.testing.server import run_in_thread
from releasegate.weights import access, downloads, terms
from support import admitted_deployer
from weights_world import GOOD_FIELDS, MODEL, REVIEWER, RM, World

ADMIN = Actor(name="admin", role="admin")


@pytest.fixture
def server(world: World) -> Iterator[str]:
    with run_in_thread(create_app(ctx=world.ctx)) as url:
        yield url


@pytest.fixture(autouse=True)
def _quiet_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _download(server: str, token: str | None, cache: Path, filename: str = "config.json", revision: str = "main") -> Path:
    return Path(hf_hub_download(MODEL, filename, revision=revision, cache_dir=cache, endpoint=server, token=token or False))


def _audits(world: World, action: str) -> list[dict]:
    return [e for e in audit.list_entries(world.ctx, ADMIN, limit=1000) if e["action"] == action]


def test_snapshot_download_serves_every_file_and_records_it(world: World, server: str, tmp_path: Path,
                                                            granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, actor = granted("ana", "ana@mit.edu")
    snap = Path(snapshot_download(MODEL, cache_dir=tmp_path / "c", endpoint=server, token=token))
    assert snap.name == world.commit
    src = world.plan_dir / "artifacts" / "v1"
    assert (snap / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (snap / "tokenizer" / "tokenizer.json").read_bytes() == (src / "tokenizer" / "tokenizer.json").read_bytes()
    got, orig = (snap / "model.safetensors").read_bytes(), (src / "model.safetensors").read_bytes()
    assert len(got) == len(orig) and got != orig  # fingerprinted: same layout and size, other bytes
    assert got[:64] == orig[:64]  # the header is copied as is
    entries = _audits(world, "weights.download")
    assert sorted(e["changes"]["file"] for e in entries) == ["config.json", "model.safetensors", "tokenizer/tokenizer.json"]
    assert {e["actor"] for e in entries} == {"ana"} and {e["changes"]["terms_version"] for e in entries} == {1}
    rows = downloads.list_downloads(world.ctx, ADMIN, MODEL)
    assert all(r["completed"] and r["bytes_sent"] == r["range"][1] for r in rows) and len(rows) == 3, rows
    # The same revision by version name and by commit id; a second download comes from the client's cache.
    assert _download(server, token, tmp_path / "d", "model.safetensors", "v1").read_bytes() == got
    assert _download(server, token, tmp_path / "e", "model.safetensors", world.commit).read_bytes() == got
    info = HfApi(endpoint=server, token=token).model_info(MODEL)
    assert info.sha == world.commit and {s.rfilename for s in info.siblings} == {
        "config.json", "model.safetensors", "tokenizer/tokenizer.json"}
    fp = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert fp.lfs is None and fp.size == len(orig)  # no LFS sha256 is advertised for per-licensee bytes
    assert actor.principal_id


def test_each_missing_step_is_refused_with_what_to_do_next(world: World, server: str, tmp_path: Path) -> None:
    token, actor = world.licensee("bob", "bob@example.org")
    with pytest.raises(GatedRepoError, match="have not requested access"):
        _download(server, token, tmp_path / "1")
    req = access.submit(world.ctx, actor, MODEL, fields=GOOD_FIELDS, declared_use="evals")
    assert req["status"] == "pending"  # example.org is not on the allowlist: review queue
    with pytest.raises(GatedRepoError, match="pending review"):
        _download(server, token, tmp_path / "2")
    access.reject(world.ctx, REVIEWER, req["id"], reason="tell us which lab you work for")
    with pytest.raises(GatedRepoError, match="rejected: tell us which lab you work for"):
        _download(server, token, tmp_path / "3")
    req2 = access.submit(world.ctx, actor, MODEL, fields={**GOOD_FIELDS, "organisation": "Example Lab"}, declared_use="evals")
    access.approve(world.ctx, REVIEWER, req2["id"])
    with pytest.raises(GatedRepoError, match="Accept the terms") as err:
        _download(server, token, tmp_path / "4")
    assert err.value.response.headers["X-Releasegate-Code"] == "terms_not_accepted"
    terms.accept(world.ctx, actor, MODEL, version=1)
    assert _download(server, token, tmp_path / "5").read_bytes() == (world.plan_dir / "artifacts/v1/config.json").read_bytes()
    # New terms: everyone accepts again before the next download.
    (world.plan_dir / "terms" / "license.md").write_text("# Atlas license v2\n\nNo redistribution; no weapons work.\n")
    published = terms.publish(world.ctx, RM, MODEL)
    assert published[0]["version"] == 2 and published[0]["changed"]
    with pytest.raises(GatedRepoError, match="terms changed since you accepted version 1"):
        _download(server, token, tmp_path / "6")
    terms.accept(world.ctx, actor, MODEL)
    _download(server, token, tmp_path / "7")
    access.revoke(world.ctx, REVIEWER, req2["id"], reason="redistributed the weights")
    with pytest.raises(GatedRepoError, match=r"revoked .*redistributed the weights"):
        _download(server, token, tmp_path / "8")
    refusals = _audits(world, "weights.refuse")
    assert {e["changes"]["code"] for e in refusals} >= {"access_not_requested", "access_pending", "access_rejected",
                                                        "terms_not_accepted", "access_revoked"}


def test_halt_and_rollback_close_downloads_at_once(world: World, server: str, tmp_path: Path,
                                                   granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("cy", "cy@lab.partner.example")
    _download(server, token, tmp_path / "1")
    link = _signed(server, token)  # handed out before the halt
    rollouts.transition(world.ctx, RM, MODEL, "v1", "halt", reason="leak investigation")
    stale = httpx.get(link)
    assert stale.status_code == 403 and stale.headers["X-Releasegate-Code"] == "weights_halted"
    with pytest.raises(GatedRepoError, match="halted: leak investigation"):
        _download(server, token, tmp_path / "2", "model.safetensors")
    rollouts.transition(world.ctx, RM, MODEL, "v1", "resume", reason="cleared")
    _download(server, token, tmp_path / "3", "model.safetensors")
    rollouts.transition(world.ctx, RM, MODEL, "v1", "rollback", reason="back to API only")
    with pytest.raises(GatedRepoError, match="weights channel of acme/atlas-8b is closed"):
        _download(server, token, tmp_path / "4")
    # Someone who never asked learns nothing once the channel is closed.
    stranger, _ = world.licensee("eve", "eve@example.com")
    with pytest.raises(RepositoryNotFoundError):
        _download(server, stranger, tmp_path / "5")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server, token=stranger).model_info(MODEL)


def test_unknown_repos_and_revisions(world: World, server: str, tmp_path: Path,
                                     granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("di", "di@cs.stanford.edu")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nope", "config.json", cache_dir=tmp_path / "1", endpoint=server, token=token)
    for rev in ("v2", "v9", "0" * 40):  # v2 exists but was never released: indistinguishable from unknown
        with pytest.raises(RevisionNotFoundError):
            _download(server, token, tmp_path / rev, revision=rev)
    r = httpx.get(f"{server}/{MODEL}/resolve/main/nope.bin", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound" and r.headers["X-Repo-Commit"] == world.commit
    bad = httpx.get(f"{server}/api/models/{MODEL}", headers={"Authorization": "Bearer rgt_not_a_token"})
    assert bad.status_code == 401 and bad.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    anon = httpx.head(f"{server}/{MODEL}/resolve/main/config.json")
    assert anon.status_code == 401 and anon.headers["X-Error-Code"] == "GatedRepo"


def _signed(server: str, token: str, path: str = "model.safetensors") -> str:
    r = httpx.get(f"{server}/{MODEL}/resolve/main/{path}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 302, r.headers
    return server + r.headers["Location"]


def test_signed_urls_bind_licensee_file_and_time(world: World, server: str,
                                                 granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("fa", "fa@uni.edu")
    other, _ = granted("go", "go@uni.edu")
    url = _signed(server, token)
    assert httpx.get(url).status_code == 200  # the signature is the credential, as with a CDN link
    tampered = url.replace("model.safetensors", "config.json")
    r = httpx.get(tampered)
    assert r.status_code == 403 and r.headers["X-Releasegate-Code"] == "signature_invalid"
    r = httpx.get(url[:-4] + ("0000" if not url.endswith("0000") else "1111"))
    assert r.status_code == 403 and r.headers["X-Releasegate-Code"] == "signature_invalid"
    r = httpx.get(url, headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403 and r.headers["X-Releasegate-Code"] == "signature_wrong_licensee"
    world.ctx.clock.advance(hours=2)  # type: ignore[attr-defined]
    r = httpx.get(url)
    assert r.status_code == 403 and r.headers["X-Releasegate-Code"] == "signature_expired"


def test_path_traversal_is_refused(world: World, server: str,
                                   granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("ha", "ha@uni.edu")
    auth = {"Authorization": f"Bearer {token}"}
    for raw in ("..%2F..%2Fetc%2Fpasswd", "tokenizer/..%2F..%2Fconfig.json", "%2Fetc%2Fpasswd", "a//b", "tokenizer/%2e%2e/config.json"):
        r = httpx.get(f"{server}/{MODEL}/resolve/main/{raw}", headers=auth)
        assert r.status_code == 400 and r.headers["X-Error-Code"] == "InvalidPath", (raw, r.status_code, r.headers)


def test_ranges_resume_and_416(world: World, server: str, granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("ia", "ia@uni.edu")
    for path in ("config.json", "model.safetensors"):
        url = _signed(server, token, path)
        whole = httpx.get(url)
        assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
        size = len(whole.content)
        part = httpx.get(url, headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == whole.content[10:100]
        assert part.headers["Content-Range"] == f"bytes 10-{min(99, size - 1)}/{size}"
        tail = httpx.get(url, headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == whole.content[-7:]
        rest = httpx.get(url, headers={"Range": f"bytes={size // 2}-"})
        assert rest.content == whole.content[size // 2:]
        bad = httpx.get(url, headers={"Range": f"bytes={size}-"})
        assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{size}"
        head = httpx.head(url)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == size
    downloads_audited = [e for e in _audits(world, "weights.download") if e["actor"] == "ia"]
    assert all(e["changes"]["range"][0] == 0 for e in downloads_audited)  # resumed ranges are rows, not audit entries


def test_refs_and_tree_listing(world: World, server: str, granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("ja", "ja@uni.edu")
    api = HfApi(endpoint=server, token=token)
    refs = api.list_repo_refs(MODEL)
    assert [b.target_commit for b in refs.branches] == [world.commit] and [t.name for t in refs.tags] == ["v1"]
    top = {f.path for f in api.list_repo_tree(MODEL)}
    assert top == {"config.json", "model.safetensors", "tokenizer"}
    deep = {f.path: f for f in api.list_repo_tree(MODEL, recursive=True)}
    assert "tokenizer/tokenizer.json" in deep and deep["config.json"].lfs is None
    assert [f.path for f in api.list_repo_tree(MODEL, path_in_repo="tokenizer")] == ["tokenizer/tokenizer.json"]


def test_weights_tiers_limit_who_may_download(world: World, server: str, tmp_path: Path,
                                              granted: Callable[[str, str], tuple[str, Actor]]) -> None:

    token, _ = granted("ka", "ka@uni.edu")
    text = (world.plan_dir / "plan.yaml").read_text().replace("      grant_days: 30\n", "      grant_days: 30\n      tiers: [partner]\n")
    (world.plan_dir / "plan.yaml").write_text(text)
    plans.apply(world.ctx, ADMIN, load_plan_file(world.plan_dir / "plan.yaml"))
    with pytest.raises(GatedRepoError, match="open only to organisations in tiers: partner"):
        _download(server, token, tmp_path / "1")
    admitted_deployer(world.ctx, "mit", "partner", ["chat"])  # the organisation field says MIT
    _download(server, token, tmp_path / "2")


def test_local_dir_rerun_trusts_the_per_licensee_etag(world: World, server: str, tmp_path: Path,
                                                      granted: Callable[[str, str], tuple[str, Actor]]) -> None:
    token, _ = granted("la", "la@uni.edu")
    out = tmp_path / "atlas"
    snapshot_download(MODEL, local_dir=out, cache_dir=tmp_path / "c", endpoint=server, token=token)
    before = len(downloads.list_downloads(world.ctx, ADMIN, MODEL))
    snapshot_download(MODEL, local_dir=out, cache_dir=tmp_path / "c", endpoint=server, token=token)
    assert len(downloads.list_downloads(world.ctx, ADMIN, MODEL)) == before  # nothing fetched twice
    r = httpx.head(f"{server}/{MODEL}/resolve/main/model.safetensors", headers={"Authorization": f"Bearer {token}"},
                   follow_redirects=True)
    etag = r.headers["X-Linked-Etag"].strip('"')
    assert etag.startswith("fp-") and len(etag) != 64  # never mistaken for a sha256 of the file
    assert int(r.headers["X-Linked-Size"]) == (out / "model.safetensors").stat().st_size
