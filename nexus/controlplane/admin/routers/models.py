"""`/admin/v1/models` (lifecycle on Ollama backends) and `/admin/v1/fleet` (pre-warm recommendations).

    GET  /models                      which model is loaded where (Ollama's /api/ps: VRAM, expiry), marks
    POST /models/load {backend, model}     202 + the operation; the lifecycle job carries it out
    POST /models/unload {backend, model}
    POST /models/migrate {model, from, to} load on `to` first, then unload from `from`
    GET  /models/ops/{id}             one operation's state (pending, running, done, failed) and step
    GET  /fleet/recommendations       loads the fleet job recommends (or performed), with reasons
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from nexus.controlplane.admin.deps import Authorized, RedisDep
from nexus.core.config import LIMITS
from nexus.core.fleet.lifecycle import Operation, OpKind
from nexus.core.fleet.store import MAX_OPS, drop_ops, read_marks, read_ops, read_ps, read_recommendations, write_op
from nexus.core.model import BackendType
from nexus.core.state import read_desired

__all__ = ["fleet_router", "router"]

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Authorized])
fleet_router = APIRouter(prefix="/fleet", tags=["fleet"], dependencies=[Authorized])
_BACKEND = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
_MODEL = Field(min_length=1, max_length=LIMITS.name_length)


class LoadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = _BACKEND
    model: str = _MODEL


class MigrateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = _MODEL
    source: str = Field(alias="from", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
    target: str = Field(alias="to", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")


async def _check(redis: Any, *names: str) -> None:
    _, desired = await read_desired(redis)
    kinds = {b.name: b.type for b in desired.backends}
    for name in names:
        if name not in kinds:
            raise HTTPException(404, f"no backend named {name!r}")
        if kinds[name] is not BackendType.OLLAMA:
            raise HTTPException(409, f"backend {name!r} is {kinds[name].value}; lifecycle operations need ollama")


async def _submit(redis: Any, kind: OpKind, model: str, **where: str) -> Operation:
    ops = await read_ops(redis)
    if len(ops) >= MAX_OPS:  # bounded: the oldest finished ones make room, unfinished ones never do
        finished = sorted((o for o in ops.values() if o.finished), key=lambda o: o.updated_at)
        surplus = len(ops) - MAX_OPS + 1
        if len(finished) < surplus:
            raise HTTPException(429, f"{len(ops)} lifecycle operations are unfinished; wait for some to finish",
                                headers={"Retry-After": "5"})
        await drop_ops(redis, [o.id for o in finished[:surplus]])
    now = time.time()
    op = Operation(id=uuid.uuid4().hex, kind=kind, model=model, created_at=now, updated_at=now, **where)
    await write_op(redis, op)
    return op


@router.get("")
async def list_models(redis: RedisDep) -> dict[str, Any]:
    _, desired = await read_desired(redis)
    readings, marks = await read_ps(redis), await read_marks(redis)
    now = time.time()
    rows = []
    for b in desired.backends:
        if b.type is not BackendType.OLLAMA:
            continue
        reading = readings.get(b.name, {})
        backend_marks = {m: mark for m, mark in marks.get(b.name, {}).items() if mark.until > now}
        for m in reading.get("models", []):
            mark = backend_marks.pop(m.get("name"), None)
            rows.append({"backend": b.name, "model": m.get("name"), "state": mark.state.value if mark else "loaded",
                         "size_vram": m.get("size_vram"), "expires_at": m.get("expires_at")})
        rows += [{"backend": b.name, "model": name, "state": mark.state.value, "size_vram": None, "expires_at": None}
                 for name, mark in backend_marks.items()]
    return {"models": rows, "read_at": {b: r.get("at") for b, r in readings.items()}}


@router.post("/load", status_code=202, response_model=Operation, responses={404: {}, 409: {}})
async def load(body: LoadCreate, redis: RedisDep) -> Operation:
    await _check(redis, body.backend)
    return await _submit(redis, OpKind.LOAD, body.model, backend=body.backend)


@router.post("/unload", status_code=202, response_model=Operation, responses={404: {}, 409: {}})
async def unload(body: LoadCreate, redis: RedisDep) -> Operation:
    await _check(redis, body.backend)
    return await _submit(redis, OpKind.UNLOAD, body.model, backend=body.backend)


@router.post("/migrate", status_code=202, response_model=Operation, responses={404: {}, 409: {}, 422: {}})
async def migrate(body: MigrateCreate, redis: RedisDep) -> Operation:
    if body.source == body.target:
        raise HTTPException(422, "from and to name the same backend")
    await _check(redis, body.source, body.target)
    return await _submit(redis, OpKind.MIGRATE, body.model, source=body.source, target=body.target)


@router.get("/ops/{op_id}", response_model=Operation, responses={404: {}})
async def get_op(op_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")],
                 redis: RedisDep) -> Operation:
    op = (await read_ops(redis)).get(op_id)
    if op is None:
        raise HTTPException(404, f"no lifecycle operation {op_id!r}")
    return op


@fleet_router.get("/recommendations")
async def recommendations(redis: RedisDep) -> dict[str, Any]:
    state = await read_recommendations(redis)
    return {"computed_at": state.get("computed_at"), "recommendations": state.get("recommendations", [])}
