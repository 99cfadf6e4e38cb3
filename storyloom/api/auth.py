"""API keys: who may bind where, and the Bearer check every request passes when a key is set."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.errors import StoryloomError
from storyloom.api.errors import ApiError

LOOPBACK_NAMES = ("localhost",)

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


class UnsafeBindError(StoryloomError, ValueError):
    """Serving beyond this computer without an API key would let anyone on the network use the GPU."""


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, has_api_key: bool) -> None:
    """Refuse to listen beyond loopback without an API key."""
    if not is_loopback(host) and not has_api_key:
        raise UnsafeBindError(
            f"refusing to serve on {host} without an API key: other computers could use this one's models; "
            "set an API key (--api-key) or bind to 127.0.0.1"
        )


def bearer_check(api_key: str) -> Callable[..., Awaitable[None]]:
    """A dependency that lets a request through only with ``Authorization: Bearer <api_key>``."""
    expected = api_key.encode()

    async def check(credentials: Credentials) -> None:
        if credentials is None:
            raise ApiError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
            )
        if not secrets.compare_digest(credentials.credentials.encode(), expected):
            raise ApiError(401, "incorrect API key", type="authentication_error", code="invalid_api_key")

    return check
