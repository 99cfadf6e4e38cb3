"""``GET /v1/models``: the base model and every loaded adapter, each addressed as a model id."""

from __future__ import annotations

import time

from fastapi import APIRouter

from storyloom.api.context import ApiContext, Ctx
from storyloom.api.schemas import ModelCard, ModelList

router = APIRouter()

OWNER = "storyloom"


def _cards(ctx: ApiContext) -> list[ModelCard]:
    created = int(time.time())
    base = ctx.engine.model_id
    adapters = [ModelCard(id=n, created=created, owned_by=OWNER, parent=base) for n in ctx.adapter_names()]
    return [ModelCard(id=base, created=created, owned_by=OWNER), *adapters]


@router.get("/v1/models")
async def list_models(ctx: Ctx) -> ModelList:
    return ModelList(data=_cards(ctx))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, ctx: Ctx) -> ModelCard:
    ctx.resolve_model(model_id)
    return next(card for card in _cards(ctx) if card.id == model_id)
