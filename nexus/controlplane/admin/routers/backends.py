"""`/admin/v1/backends`: list, read, create-or-replace and remove backends (live on every replica)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import ValidationError

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.schemas import BackendCreate, BackendPublic, WriteResult
from nexus.core.adapters.registry import zone_for
from nexus.core.config import BackendConfig, NexusSettings, check_secret_refs, format_validation_error, key_for
from nexus.core.errors import ConfigError
from nexus.core.secrets import SecretRefused
from nexus.core.state import delete_backend, put_backend, read_desired

__all__ = ["router"]

router = APIRouter(prefix="/backends", tags=["backends"], dependencies=[Authorized])
Name = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]


def public(b: BackendConfig, settings: NexusSettings) -> BackendPublic:
    try:
        configured = key_for(b.secret, b.url, settings.secrets) is not None
    except SecretRefused:
        configured = False
    return BackendPublic(**b.model_dump(), api_key_configured=configured, zone_effective=zone_for(b.type, b.zone).value)


@router.get("", response_model=list[BackendPublic])
async def list_backends(redis: RedisDep, settings: SettingsDep) -> list[BackendPublic]:
    _, desired = await read_desired(redis)
    return [public(b, settings) for b in desired.backends]


@router.get("/{name}", response_model=BackendPublic, responses={404: {"description": "no such backend"}})
async def get_backend(name: Name, redis: RedisDep, settings: SettingsDep) -> BackendPublic:
    _, desired = await read_desired(redis)
    for b in desired.backends:
        if b.name == name:
            return public(b, settings)
    raise HTTPException(404, f"no backend named {name!r}")


@router.put("/{name}", response_model=WriteResult, responses={422: {"description": "invalid backend"}})
async def put(name: Name, body: BackendCreate, redis: RedisDep, settings: SettingsDep) -> WriteResult:
    if body.name is not None and body.name != name:
        raise HTTPException(422, f"body name {body.name!r} does not match the path name {name!r}")
    data = body.model_dump(exclude={"name"})
    try:
        backend = BackendConfig(name=name, **data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"backend {name!r}")) from None
    problems = check_secret_refs([backend], settings.secrets)
    if problems:
        raise ConfigError("\n".join(problems))
    return WriteResult(version=await put_backend(redis, backend))


@router.delete("/{name}", response_model=WriteResult, responses={404: {"description": "no such backend"}})
async def delete(name: Name, redis: RedisDep) -> WriteResult:
    version = await delete_backend(redis, name)
    if version is None:
        raise HTTPException(404, f"no backend named {name!r}")
    return WriteResult(version=version)
