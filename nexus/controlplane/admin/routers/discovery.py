"""`/admin/v1/discovery`: what the discovery job found, and the operator's say over it (docs/fleet.md).

    GET    /discovery                  discovered backends (with when they were first and last seen), ignored URLs
    POST   /discovery/{name}/pin       promote a discovered backend to static: discovery never changes it again
    POST   /discovery/{name}/ignore    remove a discovered backend and ignore its URL from now on
    POST   /discovery/unignore {url}   let discovery write that URL again

Pin and ignore are desired-state writes (one `update_desired` each), so they race safely with the job.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.schemas import WriteResult
from nexus.core.config import BackendConfig, DesiredConfig
from nexus.core.fleet.store import add_ignored, drop_ignored, read_ignored, read_seen
from nexus.core.model import BackendSource
from nexus.core.state import read_desired, update_desired
from nexus.core.urls import validate_backend_url

__all__ = ["router"]

router = APIRouter(prefix="/discovery", tags=["discovery"], dependencies=[Authorized])
Name = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]


class DiscoveredPublic(BaseModel):
    name: str
    url: str
    type: str
    zone: str | None
    service: str
    instance: str
    first_seen: float | None
    last_seen: float | None


class IgnoredPublic(BaseModel):
    url: str
    name: str
    at: float


class DiscoveryPublic(BaseModel):
    enabled: bool
    service_types: list[str]
    grace_period_seconds: float
    backends: list[DiscoveredPublic]
    ignored: list[IgnoredPublic]


class UnignoreCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str


@router.get("", response_model=DiscoveryPublic)
async def list_discovered(redis: RedisDep, settings: SettingsDep) -> DiscoveryPublic:
    _, desired = await read_desired(redis)
    seen = await read_seen(redis)
    rows = []
    for b in desired.backends:
        if b.source is not BackendSource.DISCOVERED:
            continue
        rec = seen.get(b.name)
        rows.append(DiscoveredPublic(
            name=b.name, url=b.url, type=b.type.value, zone=b.zone.value if b.zone else None,
            service=rec.service if rec else "", instance=rec.instance if rec else "",
            first_seen=rec.first_seen if rec else None, last_seen=rec.last_seen if rec else None,
        ))
    ignored = [
        IgnoredPublic(url=str(v.get("url", k)), name=str(v.get("name", "")), at=float(v.get("at", 0) or 0))
        for k, v in sorted((await read_ignored(redis)).items())
    ]
    cfg = settings.discovery
    return DiscoveryPublic(enabled=cfg.enabled, service_types=cfg.service_types,
                           grace_period_seconds=cfg.grace_period_seconds, backends=rows, ignored=ignored)


def _discovered(desired: DesiredConfig, name: str) -> BackendConfig:
    for b in desired.backends:
        if b.name == name:
            if b.source is not BackendSource.DISCOVERED:
                raise HTTPException(409, f"backend {name!r} is static already; discovery does not manage it")
            return b
    raise HTTPException(404, f"no discovered backend named {name!r}")


@router.post("/{name}/pin", response_model=WriteResult, responses={404: {}, 409: {}})
async def pin(name: Name, redis: RedisDep) -> WriteResult:
    def change(current: DesiredConfig) -> DesiredConfig:
        b = _discovered(current, name)
        pinned = b.model_copy(update={"source": BackendSource.STATIC})
        backends = [pinned if x.name == name else x for x in current.backends]
        return DesiredConfig(backends=backends, routing=current.routing)

    return WriteResult(version=await update_desired(redis, change, "discovery pin"))


@router.post("/{name}/ignore", response_model=WriteResult, responses={404: {}, 409: {}})
async def ignore(name: Name, redis: RedisDep) -> WriteResult:
    _, desired = await read_desired(redis)
    url = _discovered(desired, name).url
    # ignored first: a discovery tick between the two writes then removes it rather than writing it back
    await add_ignored(redis, url, name, time.time())

    def change(current: DesiredConfig) -> DesiredConfig | None:
        kept = [b for b in current.backends if not (b.name == name and b.source is BackendSource.DISCOVERED)]
        return None if len(kept) == len(current.backends) else DesiredConfig(backends=kept, routing=current.routing)

    return WriteResult(version=await update_desired(redis, change, "discovery ignore"))


@router.post("/unignore", response_model=dict[str, bool], responses={422: {}})
async def unignore(body: UnignoreCreate, redis: RedisDep) -> dict[str, bool]:
    try:
        url = validate_backend_url(body.url)
    except ValueError as exc:
        raise HTTPException(422, f"url: {exc}") from None
    return {"removed": await drop_ignored(redis, url)}
