"""Dashboard sessions: the admin token is exchanged once for an HttpOnly, SameSite=Strict cookie.

    POST /dashboard/session {"token": "..."}  -> Set-Cookie nexus_dashboard=<id>; {"csrf": "..."}

The cookie holds a random id; Redis holds only its sha256 digest with the session's CSRF token
(`keys.dashboard_session`, expiring after `keys.DASHBOARD_SESSION_TTL_SECONDS`), so any admin replica can
check it and a Redis dump gives no usable cookie. Writes (explain, logout) need the CSRF token in the
`X-CSRF-Token` header and, when the browser sends one, an `Origin` of this very host: SameSite=Strict already
keeps the cookie off cross-site requests, and a custom header cannot be set cross-site without CORS, which this
app never grants. The token is never put in a URL, a cookie or Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import orjson
from fastapi import Depends, HTTPException, Request, Response

from nexus.core import keys
from nexus.core.observed import guard

__all__ = ["COOKIE", "Session", "SessionDep", "WriteSessionDep", "end_session", "start_session"]

COOKIE = "nexus_dashboard"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    digest: str
    csrf: str


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


async def start_session(request: Request, response: Response, token: str) -> str:
    """Check the admin token (constant time) and open a session; returns its CSRF token."""
    expected: bytes = request.app.state.admin_token
    if not hmac.compare_digest(token.encode(), expected):
        raise HTTPException(401, "wrong admin token")
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with guard("opening a dashboard session"):
        await request.app.state.redis.set(
            keys.dashboard_session(_digest(sid)), orjson.dumps({"csrf": csrf}), ex=keys.DASHBOARD_SESSION_TTL_SECONDS
        )
    response.set_cookie(
        COOKIE, sid, max_age=keys.DASHBOARD_SESSION_TTL_SECONDS, path="/dashboard", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )
    return csrf


async def end_session(request: Request, response: Response, session: Session) -> None:
    with guard("closing a dashboard session"):
        await request.app.state.redis.delete(keys.dashboard_session(session.digest))
    response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")


async def _session(request: Request) -> Session:
    sid = request.cookies.get(COOKIE, "")
    if not sid or len(sid) > 100:
        raise HTTPException(401, "no dashboard session; sign in with the admin token")
    digest = _digest(sid)
    with guard("reading a dashboard session"):
        raw = await request.app.state.redis.get(keys.dashboard_session(digest))
    try:
        csrf = orjson.loads(raw)["csrf"] if raw else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        csrf = None
    if not isinstance(csrf, str):
        raise HTTPException(401, "the dashboard session expired; sign in again")
    return Session(digest, csrf)


async def _write_session(request: Request, session: Annotated[Session, Depends(_session)]) -> Session:
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise HTTPException(403, "missing or wrong X-CSRF-Token header")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "cross-origin write refused")
    return session


SessionDep = Annotated[Session, Depends(_session)]
WriteSessionDep = Annotated[Session, Depends(_write_session)]
