"""`/dashboard/`: the page, its assets, its session and its two API calls.

    GET    /dashboard/                the page (login form until a session exists)
    GET    /dashboard/static/<file>   assets shipped in the package (no CDN: the machine may be offline)
    POST   /dashboard/session         {"token"} -> session cookie + {"csrf"}       GET: {"csrf"} again
    DELETE /dashboard/session         sign out (CSRF header)
    GET    /dashboard/api/stream      Server-Sent Events: the aggregated cluster view (`hub.DashboardHub`)
    POST   /dashboard/api/explain     the explain dry run, exactly as POST /admin/v1/route/explain (CSRF header)

Every response carries a strict Content-Security-Policy (same-origin scripts, styles and connections only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

from nexus.controlplane.admin.deps import RedisDep, SettingsDep
from nexus.controlplane.admin.routers.explain import explain_route
from nexus.controlplane.admin.schemas import ExplainRequest
from nexus.controlplane.dashboard.session import SessionDep, WriteSessionDep, end_session, start_session

__all__ = ["SECURITY_HEADERS", "STATIC", "router"]

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = frozenset({"dashboard.js", "dashboard.css"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)


class SessionCreate(BaseModel):
    token: str = Field(min_length=1, max_length=1000)


class CsrfPublic(BaseModel):
    csrf: str


@router.get("")
async def to_page() -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=308)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return Response(status_code=404)
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=kind, headers=SECURITY_HEADERS)


@router.post("/session", response_model=CsrfPublic)
async def sign_in(body: SessionCreate, request: Request, response: Response) -> CsrfPublic:
    return CsrfPublic(csrf=await start_session(request, response, body.token))


@router.get("/session", response_model=CsrfPublic)
async def current(session: SessionDep) -> CsrfPublic:
    return CsrfPublic(csrf=session.csrf)


@router.delete("/session", status_code=204)
async def sign_out(session: WriteSessionDep, request: Request, response: Response) -> None:
    await end_session(request, response, session)


@router.get("/api/stream")
async def stream(_session: SessionDep, request: Request) -> StreamingResponse:
    hub = request.app.state.dashboard
    return StreamingResponse(
        hub.subscribe(), media_type="text/event-stream", headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    )


@router.post("/api/explain")
async def dry_run(body: ExplainRequest, _session: WriteSessionDep, redis: RedisDep, settings: SettingsDep
                  ) -> dict[str, Any]:
    return await explain_route(body, redis, settings)
