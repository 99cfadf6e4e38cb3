"""``POST /v1/images/generations``: SDXL images through the studio, returned as base64 PNGs."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

from fastapi import APIRouter, Request

from storyloom.api.bridge import cancel_on_disconnect, job_result
from storyloom.api.context import Ctx
from storyloom.api.errors import field_error
from storyloom.api.schemas import ImageData, ImageRequest, ImagesResponse
from storyloom.workflow import StoryDraft, StoryOptions

router = APIRouter()


@router.post("/v1/images/generations")
async def generate_images(body: ImageRequest, request: Request, ctx: Ctx) -> ImagesResponse:
    studio = ctx.require_studio("image generation")
    width, height = body.width_height
    try:
        StoryOptions(seed=body.seed, width=width, height=height, steps=body.steps)
    except ValueError as exc:
        raise field_error(exc) from exc
    draft = StoryDraft(
        idea=body.prompt,
        image_prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        steps=body.steps,
    )
    data = []
    for i in range(body.n):
        seed = None if body.seed is None else body.seed + i
        try:
            job = studio.new_image(draft, on_event=lambda _event: None, seed=seed)
            async with cancel_on_disconnect(request, job.cancel):
                drawn = await job_result(job)
        except ValueError as exc:
            raise field_error(exc) from exc
        data.append(ImageData(b64_json=png_base64(drawn.image), seed=drawn.render_params.get("seed")))
    return ImagesResponse(created=int(time.time()), data=data)


def png_base64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
