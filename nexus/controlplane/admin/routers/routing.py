"""`/admin/v1/routing` (strategy, retries, aliases, fallbacks, weights) and `/admin/v1/policies`."""

from __future__ import annotations

from fastapi import APIRouter

from nexus.controlplane.admin.deps import Authorized, RedisDep
from nexus.controlplane.admin.schemas import RoutingPublic, RoutingUpdate, WriteResult
from nexus.core.config import DesiredConfig, PolicyConfig
from nexus.core.state import read_desired, update_desired

__all__ = ["policies_router", "routing_router"]

routing_router = APIRouter(prefix="/routing", tags=["routing"], dependencies=[Authorized])
policies_router = APIRouter(prefix="/policies", tags=["policies"], dependencies=[Authorized])


def _public(desired: DesiredConfig) -> RoutingPublic:
    r = desired.routing
    return RoutingPublic(
        strategy=r.strategy,
        max_retries=r.max_retries,
        aliases=r.aliases,
        fallbacks=r.fallbacks,
        weights=r.weights,
        policies=r.policies,
    )


@routing_router.get("", response_model=RoutingPublic)
async def get_routing(redis: RedisDep) -> RoutingPublic:
    _, desired = await read_desired(redis)
    return _public(desired)


@routing_router.put("", response_model=WriteResult, responses={422: {"description": "invalid routing"}})
async def put_routing(body: RoutingUpdate, redis: RedisDep) -> WriteResult:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)

    def change(current: DesiredConfig) -> DesiredConfig:
        routing = current.routing.model_copy(update=changes)
        return current.model_copy(update={"routing": routing})

    return WriteResult(version=await update_desired(redis, change, "routing.put"))


@policies_router.get("", response_model=list[PolicyConfig])
async def get_policies(redis: RedisDep) -> list[PolicyConfig]:
    _, desired = await read_desired(redis)
    return desired.routing.policies


@policies_router.put("", response_model=WriteResult, responses={422: {"description": "invalid policy"}})
async def put_policies(body: list[PolicyConfig], redis: RedisDep) -> WriteResult:
    def change(current: DesiredConfig) -> DesiredConfig:
        return current.model_copy(update={"routing": current.routing.model_copy(update={"policies": body})})

    return WriteResult(version=await update_desired(redis, change, "policies.put"))
