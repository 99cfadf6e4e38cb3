"""What every route needs: the engine, the studio (when the server runs inside one), the admission bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request

from storyloom.api.bridge import Admission
from storyloom.api.errors import ApiError, unknown_model


@dataclass
class ApiContext:
    engine: Any
    studio: Any | None
    admission: Admission

    def adapter_names(self) -> list[str]:
        return [info.name for info in self.engine.adapters.list()]

    def resolve_model(self, model: str) -> str | None:
        """The adapter that serves ``model`` (None for the base model); 404 listing the known ids."""
        if model == self.engine.model_id:
            return None
        names = self.adapter_names()
        if model in names:
            return model
        raise unknown_model(model, [self.engine.model_id, *names])

    def require_studio(self, what: str) -> Any:
        if self.studio is None:
            raise ApiError(
                501, f"{what} needs the Storyloom studio; this server runs on a bare engine", code="no_studio"
            )
        return self.studio


def get_context(request: Request) -> ApiContext:
    return request.app.state.storyloom


Ctx = Annotated[ApiContext, Depends(get_context)]
