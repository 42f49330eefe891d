"""Twitch OAuth tokens, kept only in the encrypted vault.

``familiar twitch login --as bot|broadcaster`` stores one :class:`StoredToken` per role under
the vault names ``twitch.token.bot`` and ``twitch.token.broadcaster``; the adapter reads them at
start and writes the new pair back every time twitchio refreshes one (Twitch may rotate refresh
tokens, so a refresh that is not saved could cost a new login). Nothing is ever written to
twitchio's plain ``.tio.tokens.json``: :class:`~.client.FamiliarTwitchClient` overrides its
load and save hooks.

Token values never reach a log line, an exception message or a ``repr``: :class:`StoredToken`
hides them, and messages name the role and the account only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from familiar_connect.errors import VaultError
from familiar_connect.platforms.twitch.scopes import Role
from familiar_connect.storage.vault import Vault

__all__ = ["ROLES", "StoredToken", "TwitchTokenStore", "vault_name"]

log = structlog.get_logger(__name__)

ROLES: tuple[Role, ...] = ("bot", "broadcaster")
_VERSION = 1


def vault_name(role: Role) -> str:
    """The vault secret name of one role's token."""
    return f"twitch.token.{role}"


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A user access token with its refresh token, as the vault keeps it.

    Attributes:
        role: which account this is for the familiar.
        user_id: the Twitch user id the token belongs to.
        login: that user's login name (display only; the id is what counts).
        scopes: the scopes Twitch granted.
        obtained_at: when it was obtained or last refreshed (wall clock, display only).
    """

    role: Role
    user_id: str
    login: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    scopes: tuple[str, ...] = ()
    obtained_at: str = ""

    def secret_values(self) -> tuple[str, str]:
        """The two values the log redactor must hide."""
        return self.access_token, self.refresh_token

    def to_json(self) -> str:
        """The vault payload."""
        return json.dumps(
            {
                "v": _VERSION,
                "role": self.role,
                "user_id": self.user_id,
                "login": self.login,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "scopes": list(self.scopes),
                "obtained_at": self.obtained_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, role: Role, payload: str) -> StoredToken:
        """Parse a vault payload.

        Raises:
            VaultError: the payload is not a token record (never quotes it).
        """
        try:
            data: dict[str, Any] = json.loads(payload)
            token = cls(
                role=role,
                user_id=str(data["user_id"]),
                login=str(data.get("login", "")),
                access_token=str(data["access_token"]),
                refresh_token=str(data["refresh_token"]),
                scopes=tuple(str(scope) for scope in data.get("scopes") or ()),
                obtained_at=str(data.get("obtained_at", "")),
            )
        except (ValueError, KeyError, TypeError):
            raise VaultError(
                f"the stored Twitch {role} token is not readable; run "
                f"`familiar twitch login --as {role}` again"
            ) from None
        if not token.user_id or not token.access_token or not token.refresh_token:
            raise VaultError(f"the stored Twitch {role} token is incomplete; log in again")
        return token


def now_display() -> str:
    """Wall-clock time for ``obtained_at`` (display only)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class TwitchTokenStore:
    """Reads and writes the familiar's Twitch tokens in its :class:`Vault`.

    Every method is safe to cancel before it starts its write; a write that has started
    completes (the vault's transactions finish even when the caller is cancelled).
    """

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    async def load(self, role: Role) -> StoredToken | None:
        """The stored token of ``role``, or None when that account never logged in.

        Raises:
            VaultKeyError: the master key does not open it.
            VaultError: it is not a readable token record.
            StorageError: the database read failed.
        """
        payload = await self._vault.get(vault_name(role))
        if payload is None:
            return None
        return StoredToken.from_json(role, payload)

    async def load_all(self) -> dict[Role, StoredToken]:
        """Every stored role's token."""
        found: dict[Role, StoredToken] = {}
        for role in ROLES:
            token = await self.load(role)
            if token is not None:
                found[role] = token
        return found

    async def save(self, token: StoredToken) -> None:
        """Store (or replace) one role's token.

        Raises:
            StorageError: the write failed.
        """
        await self._vault.put(vault_name(token.role), token.to_json())
        log.info("twitch_token_stored", role=token.role, user_id=token.user_id, login=token.login)

    async def save_refreshed(
        self, user_id: str, access_token: str, refresh_token: str, scopes: tuple[str, ...]
    ) -> list[Role]:
        """Replace the pair of every role held by ``user_id`` after a refresh.

        Returns:
            The roles updated (both when one account is bot and broadcaster; none when the
            user is not one of ours).

        Raises:
            StorageError: a write failed.
        """
        updated: list[Role] = []
        for role, token in (await self.load_all()).items():
            if token.user_id != user_id:
                continue
            await self.save(
                replace(
                    token,
                    access_token=access_token,
                    refresh_token=refresh_token,
                    scopes=scopes or token.scopes,
                    obtained_at=now_display(),
                )
            )
            updated.append(role)
        return updated

    async def delete(self, role: Role) -> bool:
        """Forget one role's token; return whether there was one."""
        return await self._vault.delete(vault_name(role))
