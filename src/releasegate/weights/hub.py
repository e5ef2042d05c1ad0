"""Hugging Face-compatible endpoints, so ``huggingface_hub`` works unmodified against releasegate.

    GET  /api/models/{org}/{name}[/revision/{rev}]        model_info / repo_info
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]     list_repo_tree (snapshot_download)
    HEAD /{org}/{name}/resolve/{rev}/{path}               metadata, 302 to a signed URL
    GET  /{org}/{name}/resolve/{rev}/{path}               302 to a signed URL
    HEAD/GET /weights/dl/{org}/{name}/{commit}/{path}     the bytes (signed, per licensee, ranges)

Clients set ``HF_ENDPOINT`` to the server and ``HF_TOKEN`` to a releasegate licensee token.
The signed URL is on the same origin, so the client follows the HEAD redirect and reads the
file metadata (``X-Repo-Commit``, ``ETag``, ``X-Linked-Size``) from the signed URL's answer.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from releasegate.errors import Forbidden, InvalidInput, Unauthenticated
from releasegate.services import principals
from releasegate.services.context import Actor, ServiceContext
from releasegate.store.models import Principal
from releasegate.weights import downloads, gating, registry, signing, state
from releasegate.weights.config import WeightsConfig
from releasegate.weights.fingerprint import FingerprintCache, FingerprintParams
from releasegate.weights.gating import HubRefusal
from releasegate.weights.responses import (
    FP_CHUNK,
    CountedBody,
    RangeNotSatisfiable,
    hf_error,
    parse_range,
)
from releasegate.weights.store import check_repo_path, lfs_pointer_oid


def _ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def _keys(request: Request, lock: threading.Lock) -> tuple[bytes, bytes]:
    """(URL-signing key, fingerprint secret), derived once per app from the server secret."""
    keys: tuple[bytes, bytes] | None = getattr(request.app.state, "weights_keys", None)
    if keys is None:
        # One thread derives them: the first read of a not-yet-generated secret file must not race.
        with lock:
            keys = getattr(request.app.state, "weights_keys", None)
            if keys is None:
                secret = _ctx(request).settings.server_secret()
                keys = (signing.signing_key(secret), signing.fingerprint_secret(secret))
                request.app.state.weights_keys = keys
    return keys


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _actor(request: Request, ctx: ServiceContext) -> Actor | None:
    """The caller, None if anonymous; a bad token is a 401 the client does not mistake for a missing repo."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise HubRefusal(401, "InvalidCredentials", "invalid_token", "Invalid credentials in Authorization header")
    try:
        with ctx.db.read() as session:
            return principals.authenticate(session, token)
    except Unauthenticated:
        raise HubRefusal(401, "InvalidCredentials", "invalid_token", "Invalid credentials in Authorization header") from None


def _refuse(request: Request, ctx: ServiceContext, actor: Actor | None, model: str, exc: HubRefusal, *,
            revision: str | None = None, path: str | None = None, extra: dict[str, str] | None = None) -> Response:
    downloads.refusal(ctx, actor, model, exc, revision=revision, path=path, ip=_ip(request))
    return hf_error(exc.http_status, exc.hf_code, exc.code, exc.message, commit=exc.commit, extra=extra,
                    head=request.method == "HEAD")


def _fp_etag(fp_secret: bytes, principal_id: str, sha256: str) -> str:
    """A per-licensee ETag for fingerprinted bytes; deliberately not a 64-hex sha256, so clients do not
    compare it with the hash of the file they hold (the bytes differ per licensee)."""
    msg = f"{principal_id}\n{sha256}\n{FingerprintParams().scheme_id}".encode()
    return "fp-" + hmac.new(fp_secret, msg, hashlib.sha256).hexdigest()[:40]


def _listed(a: registry.FileInfo, fingerprinted: bool) -> dict[str, Any]:
    """How a file appears in listings. Fingerprinted files carry no LFS sha256: each licensee's bytes differ."""
    if fingerprinted:
        oid = hashlib.sha1(f"rg-fp\n{a.sha256}".encode(), usedforsecurity=False).hexdigest()
        return {"path": a.path, "size": a.size, "oid": oid, "lfs": None}
    if a.lfs:
        return {"path": a.path, "size": a.size, "oid": lfs_pointer_oid(a.sha256, a.size),
                "lfs": {"oid": a.sha256, "sha256": a.sha256, "size": a.size, "pointerSize": 134}}
    return {"path": a.path, "size": a.size, "oid": a.git_oid, "lfs": None}


def create_hub_router(config: WeightsConfig | None = None) -> APIRouter:
    """The router; mount it at the server root. ``config`` defaults to ``RELEASEGATE_WEIGHTS_*`` settings."""
    config = config or WeightsConfig()
    url_ttl = config.url_ttl
    router = APIRouter(tags=["weights (Hugging Face-compatible)"], include_in_schema=False)
    lock = threading.Lock()
    # One fingerprint cache (with its plan cache) for the life of the router, i.e. per app: building
    # a plan costs ~0.1-0.3 s per file, which a cache made per request paid on every first download.
    # Keyed by directory because the data directory is only known from the app's context.
    fp_caches: dict[Path, FingerprintCache] = {}

    def keys(request: Request) -> tuple[bytes, bytes]:
        return _keys(request, lock)

    def fingerprints(ctx: ServiceContext) -> FingerprintCache:
        root = ctx.settings.data_dir / "fingerprints"
        with lock:
            cache = fp_caches.get(root)
            if cache is None:
                cache = fp_caches[root] = FingerprintCache(root)
            return cache

    def _repo_view(request: Request, org: str, name: str, revision: str) -> tuple[Any, Any, list[dict[str, Any]]] | Response:
        ctx = _ctx(request)
        model = f"{org}/{name}"
        actor = None
        try:
            actor = _actor(request, ctx)
            with ctx.db.read() as session:
                mw = gating.load_visible(session, model, actor)
                v = gating.resolve_revision(mw, revision, actor, for_download=False)
                files = [_listed(a, gating.is_fingerprinted(v, a.path)) for a in registry.files_of(session, model, v.version)]
        except HubRefusal as exc:
            return _refuse(request, ctx, actor, model, exc, revision=revision)
        return mw, v, files

    @router.get("/api/models/{org}/{name}")
    @router.get("/api/models/{org}/{name}/revision/{revision}")
    def model_info(request: Request, org: str, name: str, revision: str = "main") -> Response:
        view = _repo_view(request, org, name, revision)
        if isinstance(view, Response):
            return view
        mw, v, files = view
        policy = v.policy or mw.policy
        auto = policy is not None and policy.vetting.auto_approve is not None
        when = v.revision.registered_at.isoformat().replace("+00:00", ".000Z")
        return JSONResponse({
            "_id": v.revision.commit[:24], "id": mw.model, "modelId": mw.model, "author": mw.model.split("/")[0],
            "sha": v.revision.commit, "lastModified": when, "createdAt": when, "private": False,
            "gated": "auto" if auto else "manual", "disabled": False, "downloads": 0, "likes": 0,
            "tags": ["releasegate", f"version:{v.version}"], "library_name": None, "pipeline_tag": None,
            "siblings": [{"rfilename": f["path"], "size": f["size"], "blobId": f["oid"],
                          **({"lfs": f["lfs"]} if f["lfs"] else {})} for f in files],
            "releasegate": {"version": v.version, "stage": v.stage.name if v.stage else None, "state": v.state,
                            "terms": policy.terms if policy else None},
        })

    @router.get("/api/models/{org}/{name}/refs")
    def refs(request: Request, org: str, name: str) -> Response:
        """Branches (``main``) and tags (one per version the caller may see) with their commits."""
        ctx = _ctx(request)
        model = f"{org}/{name}"
        actor = None
        try:
            actor = _actor(request, ctx)
            with ctx.db.read() as session:
                mw = gating.load_visible(session, model, actor)
        except HubRefusal as exc:
            return _refuse(request, ctx, actor, model, exc)
        staff = state.is_staff(actor)
        tags = [{"name": v.version, "ref": f"refs/tags/{v.version}", "targetCommit": v.commit}
                for v in mw.versions.values() if v.commit and (v.open or staff)]
        branches = [{"name": "main", "ref": "refs/heads/main", "targetCommit": mw.main.commit}] if mw.main else []
        return JSONResponse({"branches": branches, "converts": [], "tags": tags})

    @router.get("/api/models/{org}/{name}/tree/{revision}")
    @router.get("/api/models/{org}/{name}/tree/{revision}/{path:path}")
    def tree(request: Request, org: str, name: str, revision: str, path: str = "", recursive: str = "false") -> Response:
        view = _repo_view(request, org, name, revision)
        if isinstance(view, Response):
            return view
        _, _, files = view
        deep = recursive.lower() in ("true", "1", "yes")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for f in files:
            if not f["path"].startswith(prefix):
                continue
            rest = f["path"][len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if deep or depth == 1:
                    oid = hashlib.sha1(f"rg-tree\n{folder}".encode(), usedforsecurity=False).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
                if not deep:
                    break
            if deep or len(rest) == 1:
                entry = {"type": "file", "oid": f["oid"], "size": f["size"], "path": f["path"]}
                if f["lfs"]:
                    entry["lfs"] = {"oid": f["lfs"]["oid"], "size": f["lfs"]["size"], "pointerSize": f["lfs"]["pointerSize"]}
                entries[f["path"]] = entry
        return JSONResponse([entries[k] for k in sorted(entries)])

    def _file_headers(request: Request, ticket: gating.DownloadTicket) -> dict[str, str]:
        a = ticket.artifact
        if ticket.fingerprinted:
            etag = _fp_etag(keys(request)[1], ticket.principal_id, a.sha256)
        else:
            etag = a.sha256 if a.lfs else a.git_oid
        return {"X-Repo-Commit": ticket.commit, "ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"',
                "X-Linked-Size": str(a.size), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                "Cache-Control": "private, no-store"}

    @router.api_route("/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve(request: Request, org: str, name: str, revision: str, path: str) -> Response:
        ctx = _ctx(request)
        model = f"{org}/{name}"
        actor = None
        try:
            actor = _actor(request, ctx)
            _check_path(path)
            with ctx.db.read() as session:
                ticket = gating.authorize_download(session, actor, model, revision, path, now=ctx.clock.now(),
                                                   public_url=ctx.settings.public_url)
        except HubRefusal as exc:
            return _refuse(request, ctx, actor, model, exc, revision=revision, path=path)
        expires = int(ctx.clock.now().timestamp()) + url_ttl
        location = signing.signed_path(keys(request)[0], model=model, commit=ticket.commit, path=path,
                                       licensee=ticket.principal_id, expires=expires)
        headers = _file_headers(request, ticket)
        headers["Location"] = location
        return Response(status_code=302, headers=headers)

    @router.api_route(signing.PREFIX + "/{org}/{name}/{commit}/{path:path}", methods=["GET", "HEAD"])
    def download(request: Request, org: str, name: str, commit: str, path: str) -> Response:
        ctx = _ctx(request)
        model = f"{org}/{name}"
        q = request.query_params
        actor: Actor | None = None
        try:
            grant = signing.verify(keys(request)[0], model=model, commit=commit, path=path, licensee=q.get("lic"),
                                   expires=q.get("exp"), sig=q.get("sig"), now=ctx.clock.now())
        except Forbidden as exc:
            return _refuse(request, ctx, None, model, HubRefusal(403, "SignatureInvalid", exc.code, exc.message),
                           revision=commit, path=path)
        try:
            presented = _actor(request, ctx)
            actor = _licensee(ctx, grant.licensee)
            if presented is not None and presented.principal_id != grant.licensee:
                actor = presented
                raise HubRefusal(403, "SignatureInvalid", "signature_wrong_licensee",
                                 "This download link belongs to another licensee. Download with your own token to get yours.")
            with ctx.db.read() as session:
                ticket = gating.authorize_download(session, actor, model, commit, path, now=ctx.clock.now(),
                                                   public_url=ctx.settings.public_url)
            source = registry.artifact_store(ctx).local_path(ticket.artifact.store_key)
            if source is None or source.stat().st_size != ticket.artifact.size:
                # 410, not 5xx: clients retry 5xx for ~20 s, and this does not heal by itself.
                raise HubRefusal(410, "ArtifactUnavailable", "artifact_unavailable",
                                 f"{path} of {model} is registered but its stored copy is missing or changed; "
                                 "the provider must register the weights again.", commit=ticket.commit)
        except HubRefusal as exc:
            return _refuse(request, ctx, actor, model, exc, revision=commit, path=path)
        headers = _file_headers(request, ticket)
        size = ticket.artifact.size
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(size)})
        try:
            if_range = request.headers.get("if-range")
            wanted = None if if_range and if_range.strip() != headers["ETag"] else parse_range(request.headers.get("range"), size)
        except RangeNotSatisfiable:
            bad_range = HubRefusal(416, "RangeNotSatisfiable", "range_not_satisfiable",
                                   f"The requested range {request.headers.get('range')} is outside {path} ({size} bytes).",
                                   commit=ticket.commit)
            return _refuse(request, ctx, actor, model, bad_range, revision=commit, path=path,
                           extra={"Content-Range": f"bytes */{size}"})
        start, end = wanted if wanted is not None else (0, size)
        status = 200
        if wanted is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        row = downloads.start(ctx, ticket, start=start, end=end, ip=_ip(request))

        def on_done(sent: int) -> None:
            downloads.finish(ctx, row, bytes_sent=sent)

        plain: Path | None = source
        if ticket.fingerprinted:
            cache = fingerprints(ctx)
            fp_secret = keys(request)[1]
            # Without nginx in front, every fingerprinted download is produced from the shared source
            # while it streams (one worker thread ahead of the event loop): marking costs less than the
            # copy a plain download makes anyway, and the source is in the page cache because everyone
            # reads it, whereas a per-licensee copy would be read from disk (measured in docs/weights.md).
            # Behind nginx a whole-file copy is cached, so repeats leave by X-Accel-Redirect and sendfile.
            copies = config.accel_redirect is not None
            plain = cache.get(ticket.artifact.sha256, ticket.principal_id, fp_secret) if copies else None
            if plain is None or plain.stat().st_size != size:
                pieces, copy = cache.produce(source, ticket.principal_id, fp_secret,
                                             source_sha256=ticket.artifact.sha256, start=start, end=end,
                                             chunk_size=FP_CHUNK, cache_copy=copies)
                return CountedBody(status=status, headers=headers, start=start, end=end, on_done=on_done,
                                   pieces=pieces, finish=copy.finish if copy is not None else None)
        assert plain is not None
        accel = _accel_path(config, ctx, plain)
        if accel is not None:
            # nginx sends the bytes (sendfile, ranges) from its internal location; we only decided and recorded.
            on_done(end - start)
            return Response(status_code=200, headers={**{k: v for k, v in headers.items() if k != "Content-Range"},
                                                      "X-Accel-Redirect": accel, "X-Accel-Buffering": "no"})
        return CountedBody(status=status, headers=headers, start=start, end=end, on_done=on_done, file=plain)

    return router


def _accel_path(config: WeightsConfig, ctx: ServiceContext, file: Path) -> str | None:
    """The X-Accel-Redirect target for ``file``, if nginx fronts us and the file is under the data directory."""
    if config.accel_redirect is None:
        return None
    try:
        rel = file.resolve().relative_to(ctx.settings.data_dir.resolve())
    except ValueError:
        return None
    return config.accel_redirect + quote(rel.as_posix())


def _check_path(path: str) -> None:
    try:
        check_repo_path(path)
    except InvalidInput as exc:
        raise HubRefusal(400, "InvalidPath", "invalid_path", exc.message) from None


def _licensee(ctx: ServiceContext, principal_id: str) -> Actor:
    """The licensee a verified signature names; its token must still be valid."""
    with ctx.db.read() as session:
        p = session.get(Principal, principal_id)
        if p is None or p.revoked_at is not None:
            raise HubRefusal(403, "GatedRepo", "licensee_revoked",
                             "The licensee this link was issued to no longer has a valid token.")
        return Actor(name=p.name, role=p.role, email=p.email, deployer_id=p.deployer_id, principal_id=p.id)

