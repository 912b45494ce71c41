"""`/admin/v1/teams/{name}`: teams and their limits (the same as a key's; a key's request must fit both).

PUT creates or replaces a team; DELETE refuses (409) while keys name the team (revoke or move them first).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.schemas import WriteResult
from nexus.controlplane.admin.tenancy_schemas import TeamPublic, TeamPut
from nexus.controlplane.admin.tenancy_views import team_public
from nexus.core.config import DesiredConfig
from nexus.core.state import read_desired, update_desired
from nexus.core.tenancy import TEAM_NAME_PATTERN, TeamConfig

__all__ = ["router"]

router = APIRouter(prefix="/teams", tags=["teams"], dependencies=[Authorized])
TeamName = Annotated[str, Path(alias="team", pattern=TEAM_NAME_PATTERN)]


@router.get("", response_model=list[TeamPublic])
async def list_teams(redis: RedisDep, settings: SettingsDep) -> list[TeamPublic]:
    _, desired = await read_desired(redis)
    return [await team_public(redis, settings, desired, t) for t in desired.teams]


@router.get("/{team}", response_model=TeamPublic, responses={404: {"description": "no such team"}})
async def get_team(name: TeamName, redis: RedisDep, settings: SettingsDep) -> TeamPublic:
    _, desired = await read_desired(redis)
    for t in desired.teams:
        if t.name == name:
            return await team_public(redis, settings, desired, t)
    raise HTTPException(404, f"no team {name!r}")


@router.put("/{team}", response_model=WriteResult, responses={422: {"description": "invalid team"}})
async def put_team(name: TeamName, body: TeamPut, redis: RedisDep) -> WriteResult:
    team = TeamConfig(**body.model_dump(), name=name)

    def change(current: DesiredConfig) -> DesiredConfig:
        return current.model_copy(update={"teams": [*(t for t in current.teams if t.name != name), team]})

    return WriteResult(version=await update_desired(redis, change, f"team.put:{name}"))


@router.delete("/{team}", response_model=WriteResult, responses={404: {"description": "no such team"},
                                                                  409: {"description": "keys still name the team"}})
async def delete_team(name: TeamName, redis: RedisDep) -> WriteResult:
    def change(current: DesiredConfig) -> DesiredConfig:
        if all(t.name != name for t in current.teams):
            raise HTTPException(404, f"no team {name!r}")
        users = [k.id for k in current.keys if k.team == name]
        if users:
            raise HTTPException(409, f"team {name!r} still has keys ({', '.join(users[:10])}); revoke or move them")
        return current.model_copy(update={"teams": [t for t in current.teams if t.name != name]})

    return WriteResult(version=await update_desired(redis, change, f"team.delete:{name}"))
