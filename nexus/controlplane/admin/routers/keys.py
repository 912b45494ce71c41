"""`/admin/v1/keys`: virtual client keys (nexus.core.tenancy) as desired state.

Create answers 201 with the secret (`nx-...`), shown this once: only its HMAC digest is stored. Revoking
(DELETE) keeps the key as a tombstone (`revoked_at`), so revocation is a desired-state change every replica
applies with its next snapshot (a change event: well under a second) and an id is never reused. Rotating gives a
new secret; the old one stays valid for `grace_seconds` (default 1 h, at most 7 days). Every view carries the
key's current spend (its own budget period) and its rate usage over the last 60 s, cluster-wide.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.tenancy_schemas import KeyCreate, KeyCreated, KeyPublic, KeyUpdate, RotateRequest
from nexus.controlplane.admin.tenancy_views import key_public
from nexus.core.config import DesiredConfig
from nexus.core.state import read_desired, update_desired
from nexus.core.tenancy import KEY_ID_PATTERN, KeyConfig, hash_key, new_key_id, new_key_secret
from nexus.core.tenant_store import load_hash_secret

__all__ = ["router"]

router = APIRouter(prefix="/keys", tags=["keys"], dependencies=[Authorized])
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="key_<12 hex>")]


def _find(desired: DesiredConfig, key_id: str) -> KeyConfig:
    for k in desired.keys:
        if k.id == key_id:
            return k
    raise HTTPException(404, f"no key {key_id!r}")


def _replace(current: DesiredConfig, new: KeyConfig) -> DesiredConfig:
    return current.model_copy(update={"keys": [new if k.id == new.id else k for k in current.keys]})


@router.post("", status_code=201, response_model=KeyCreated, responses={422: {"description": "invalid key"}})
async def create_key(body: KeyCreate, redis: RedisDep, settings: SettingsDep) -> KeyCreated:
    secret = new_key_secret()
    cfg = KeyConfig(
        **body.model_dump(), id=new_key_id(), digest=hash_key(await load_hash_secret(redis, settings), secret),
        created_at=time.time(),
    )
    await update_desired(redis, lambda cur: cur.model_copy(update={"keys": [*cur.keys, cfg]}), f"key.create:{cfg.id}")
    public = await key_public(redis, settings, await _current(redis), cfg)
    return KeyCreated(**public.model_dump(), key=secret)


async def _current(redis: Any) -> DesiredConfig:
    return (await read_desired(redis))[1]


@router.get("", response_model=list[KeyPublic])
async def list_keys(redis: RedisDep, settings: SettingsDep) -> list[KeyPublic]:
    desired = await _current(redis)
    return [await key_public(redis, settings, desired, k) for k in desired.keys]


@router.get("/{key_id}", response_model=KeyPublic, responses={404: {"description": "no such key"}})
async def get_key(key_id: KeyId, redis: RedisDep, settings: SettingsDep) -> KeyPublic:
    desired = await _current(redis)
    return await key_public(redis, settings, desired, _find(desired, key_id))


@router.patch("/{key_id}", response_model=KeyPublic, responses={404: {"description": "no such key"}})
async def update_key(key_id: KeyId, body: KeyUpdate, redis: RedisDep, settings: SettingsDep) -> KeyPublic:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        raise HTTPException(422, "name: a key's name cannot be cleared")

    def change(current: DesiredConfig) -> DesiredConfig:
        old = _find(current, key_id)
        if old.revoked_at is not None:
            raise HTTPException(409, f"key {key_id} is revoked; create a new key")
        return _replace(current, KeyConfig.model_validate({**old.model_dump(), **changes}))

    await update_desired(redis, change, f"key.update:{key_id}")
    desired = await _current(redis)
    return await key_public(redis, settings, desired, _find(desired, key_id))


@router.delete("/{key_id}", response_model=KeyPublic, responses={404: {"description": "no such key"}})
async def revoke_key(key_id: KeyId, redis: RedisDep, settings: SettingsDep) -> KeyPublic:
    now = time.time()

    def change(current: DesiredConfig) -> DesiredConfig | None:
        old = _find(current, key_id)
        if old.revoked_at is not None:
            return None  # revoking twice changes nothing
        return _replace(current, old.model_copy(update={"revoked_at": now}))

    await update_desired(redis, change, f"key.revoke:{key_id}")
    desired = await _current(redis)
    return await key_public(redis, settings, desired, _find(desired, key_id))


@router.post("/{key_id}/rotate", response_model=KeyCreated, responses={404: {"description": "no such key"}})
async def rotate_key(
    key_id: KeyId, redis: RedisDep, settings: SettingsDep, body: Annotated[RotateRequest | None, Body()] = None
) -> KeyCreated:
    grace = (body or RotateRequest()).grace_seconds
    secret = new_key_secret()
    digest = hash_key(await load_hash_secret(redis, settings), secret)
    until = time.time() + grace

    def change(current: DesiredConfig) -> DesiredConfig:
        old = _find(current, key_id)
        if old.revoked_at is not None:
            raise HTTPException(409, f"key {key_id} is revoked; create a new key")
        keep = grace > 0
        update = {"digest": digest, "previous_digest": old.digest if keep else None,
                  "previous_until": until if keep else None}
        return _replace(current, old.model_copy(update=update))

    await update_desired(redis, change, f"key.rotate:{key_id}")
    desired = await _current(redis)
    public = await key_public(redis, settings, desired, _find(desired, key_id))
    return KeyCreated(**public.model_dump(), key=secret)
