"""`GET /admin/v1/config/export` and `POST /admin/v1/config/import`: the desired config as TOML.

Export writes `[[backends]]`, `[routing]`, `[[teams]]` and `[[keys]]` in nexus.toml's own shape (key
variable names only, never keys; client keys as their digests, never their secrets). Import validates the
whole document exactly as `nexus.toml` is validated and replaces the desired config in one atomic write; an
invalid document changes nothing. Other sections (server, redis, ...) are per-process settings: import ignores
them and says so in its answer.
"""

from __future__ import annotations

import tomllib
from typing import Any

import tomli_w
from fastapi import APIRouter, Body, HTTPException, Response

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.core.config import DesiredConfig, check_secret_refs, validate_desired
from nexus.core.errors import ConfigError
from nexus.core.state import read_desired, write_desired

__all__ = ["router"]

router = APIRouter(prefix="/config", tags=["config"], dependencies=[Authorized])
TOML_TYPE = "application/toml"
_DESIRED = ("backends", "routing", "keys", "teams")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def to_toml(desired: DesiredConfig) -> str:
    data = _drop_none(desired.model_dump(mode="json"))
    return tomli_w.dumps(data)


@router.get("/export", response_class=Response, responses={200: {"content": {TOML_TYPE: {}}}})
async def export_config(redis: RedisDep) -> Response:
    version, desired = await read_desired(redis)
    text = f"# Nexus desired config, version {version}\n" + to_toml(desired)
    return Response(text, media_type=TOML_TYPE)


@router.post("/import", responses={422: {"description": "invalid config"}})
async def import_config(
    redis: RedisDep, settings: SettingsDep, body: str = Body(..., media_type=TOML_TYPE)
) -> dict[str, Any]:
    try:
        data = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise HTTPException(422, f"import: not valid TOML: {exc}") from None
    ignored = sorted(k for k in data if k not in _DESIRED)
    payload = {k: data[k] for k in _DESIRED if k in data}
    desired = validate_desired(payload, "import")
    problems = check_secret_refs(desired.backends, settings.secrets)
    if problems:
        raise ConfigError("\n".join(f"import: {p}" for p in problems))
    version = await write_desired(redis, desired, "config.import")
    return {"version": version, "backends": len(desired.backends), "ignored_sections": ignored}
