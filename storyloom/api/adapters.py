"""``/storyloom/adapters``: list the loaded adapters, load one from a local folder, unload one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder
from starlette.concurrency import run_in_threadpool

from storyloom.api.context import Ctx
from storyloom.api.errors import ApiError
from storyloom.api.schemas import AdapterLoadRequest

router = APIRouter(prefix="/storyloom/adapters")


@router.get("")
async def list_adapters(ctx: Ctx) -> dict[str, Any]:
    return {"object": "list", "data": jsonable_encoder(ctx.engine.adapters.list())}


@router.get("/{name}")
async def get_adapter(name: str, ctx: Ctx) -> Any:
    return jsonable_encoder(ctx.engine.adapters.get(name))


@router.post("", status_code=201)
async def load_adapter(body: AdapterLoadRequest, ctx: Ctx) -> Any:
    if body.name == ctx.engine.model_id:
        raise ApiError(400, f"name: '{body.name}' is the base model's id; pick another name", param="name")
    info = await run_in_threadpool(ctx.engine.adapters.load, body.name, body.path)
    return jsonable_encoder(info)


@router.delete("/{name}")
async def unload_adapter(name: str, ctx: Ctx) -> dict[str, Any]:
    ctx.engine.adapters.get(name)
    await run_in_threadpool(ctx.engine.adapters.unload, name)
    return {"id": name, "object": "adapter", "deleted": True}
