"""Twitch's identity service (``id.twitch.tv``) for the commands: device codes and validation.

The running adapter talks to the identity service through twitchio. ``familiar twitch login``
and ``familiar check`` run without a twitchio client, so they use this small aiohttp client:

- ``POST oauth2/device`` starts a Device Code Grant;
- ``POST oauth2/token`` (``grant_type=urn:ietf:params:oauth:grant-type:device_code``) polls it;
- ``GET oauth2/validate`` says whose a token is, its scopes and its remaining lifetime.

The base URL is ``TWITCH_ID_BASE`` (a loopback fake in tests). Every request has a timeout.
Errors carry Twitch's short message, never a token or the client secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from familiar_connect.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)

__all__ = ["DEVICE_GRANT", "DeviceCode", "IdentityClient", "TokenInfo", "TokenResponse"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """The answer to ``POST oauth2/device``: what to show the person, and what to poll with."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    interval_s: float
    expires_in_s: float


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A token grant's answer (``status`` and body; the body may hold tokens: never log it)."""

    status: int
    body: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What ``GET oauth2/validate`` says about a token."""

    user_id: str
    login: str
    scopes: tuple[str, ...]
    expires_in_s: int


class IdentityClient:
    """A short-lived aiohttp client for the identity service. Use as ``async with``.

    Args:
        id_base: ``TWITCH_ID_BASE`` (``https://id.twitch.tv/``).
        client_id: the application's client id.
        timeout_s: the bound on each request.
    """

    def __init__(self, id_base: str, client_id: str, *, timeout_s: float = _TIMEOUT_S) -> None:
        self._base = id_base if id_base.endswith("/") else id_base + "/"
        self._client_id = client_id
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> IdentityClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, path: str, *, data: Mapping[str, str] | None = None, token: str = ""
    ) -> tuple[int, Mapping[str, Any]]:
        if self._session is None:
            raise RuntimeError("use IdentityClient as `async with`")
        headers = {"Authorization": f"OAuth {token}"} if token else {}
        try:
            async with self._session.request(
                method, self._base + path, data=data, headers=headers
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = {}
                return response.status, body if isinstance(body, Mapping) else {}
        except TimeoutError:
            raise ProviderTimeout(
                f"Twitch's {path} did not answer in time", provider="twitch"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderConnectionError(
                f"cannot reach Twitch's identity service ({type(exc).__name__})", provider="twitch"
            ) from exc

    async def start_device_flow(self, scopes: Sequence[str]) -> DeviceCode:
        """Start a Device Code Grant for ``scopes``.

        Raises:
            ProviderError: Twitch refused (e.g. an unknown client id), or the answer is malformed.
        """
        status, body = await self._call(
            "POST", "oauth2/device", data={"client_id": self._client_id, "scopes": " ".join(scopes)}
        )
        if status != 200:
            raise ProviderError(
                f"Twitch refused to start a device login: {str(body.get('message', status))[:200]}",
                provider="twitch",
                status=status,
            )
        try:
            return DeviceCode(
                device_code=str(body["device_code"]),
                user_code=str(body["user_code"]),
                verification_uri=str(body["verification_uri"]),
                interval_s=float(body.get("interval", 5)),
                expires_in_s=float(body.get("expires_in", 1800)),
            )
        except (KeyError, TypeError, ValueError):
            raise ProviderProtocolError(
                "Twitch's device login answer is missing fields", provider="twitch"
            ) from None

    async def poll_device_token(self, code: DeviceCode, scopes: Sequence[str]) -> TokenResponse:
        """Ask once whether the person has authorised ``code`` yet."""
        status, body = await self._call(
            "POST",
            "oauth2/token",
            data={
                "client_id": self._client_id,
                "scopes": " ".join(scopes),
                "device_code": code.device_code,
                "grant_type": DEVICE_GRANT,
            },
        )
        return TokenResponse(status, body)

    async def validate(self, access_token: str) -> TokenInfo | None:
        """Whose the token is and what it may do; None when Twitch says it is invalid (401).

        Raises:
            ProviderError: another failure.
        """
        status, body = await self._call("GET", "oauth2/validate", token=access_token)
        if status == 401:
            return None
        if status != 200:
            raise ProviderError(
                f"validating a token failed: {str(body.get('message', status))[:200]}",
                provider="twitch",
                status=status,
            )
        return TokenInfo(
            user_id=str(body.get("user_id") or ""),
            login=str(body.get("login") or ""),
            scopes=tuple(str(scope) for scope in body.get("scopes") or ()),
            expires_in_s=int(body.get("expires_in") or 0),
        )
