"""Request dependencies: the service context and the authenticated actor."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from releasegate.errors import Unauthenticated
from releasegate.services import principals
from releasegate.services.context import Actor, ServiceContext


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def get_actor(request: Request, ctx: Annotated[ServiceContext, Depends(get_ctx)]) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send a bearer token: Authorization: Bearer rgt_…", code="missing_token")
    with ctx.db.read() as session:
        return principals.authenticate(session, token)


Ctx = Annotated[ServiceContext, Depends(get_ctx)]
CurrentActor = Annotated[Actor, Depends(get_actor)]
