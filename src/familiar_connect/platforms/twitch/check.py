"""What ``familiar check`` says about Twitch: which accounts are logged in, valid, and scoped.

For each role with a stored token it asks Twitch's ``oauth2/validate`` whose the token is, how
long it lives, and which scopes it has, and compares them with what the enabled ``[twitch]``
features need, naming any missing scope and the command that fixes it. An expired token is
reported as such (the adapter refreshes it at start). Tokens are never printed.
"""

from __future__ import annotations

from familiar_connect.character import Character
from familiar_connect.errors import FamiliarError
from familiar_connect.platforms.twitch.config import TwitchSection
from familiar_connect.platforms.twitch.identity import IdentityClient
from familiar_connect.platforms.twitch.scopes import FEATURES, Role, missing_scopes
from familiar_connect.platforms.twitch.tokens import ROLES, StoredToken, TwitchTokenStore
from familiar_connect.settings import Settings
from familiar_connect.storage.db import open_database
from familiar_connect.storage.vault import Vault

__all__ = ["describe_twitch", "needed_scopes"]


def needed_scopes(
    config: TwitchSection, role: Role, *, same_account: bool
) -> dict[str, tuple[str, ...]]:
    """``{feature kind: scopes}`` a token of ``role`` needs for the enabled features."""
    return {
        kind: feature.scopes
        for kind, feature in FEATURES.items()
        if (kind == "chat" or config.kind(kind).enabled)
        and (same_account or feature.role == role)
        and feature.scopes
    }


def _duration(seconds: int) -> str:
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min"


async def _describe_token(
    identity: IdentityClient, token: StoredToken, config: TwitchSection, same_account: bool
) -> str:
    info = await identity.validate(token.access_token)
    head = f"Twitch {token.role}: {token.login}"
    if info is None:
        return (
            f"{head}: the access token has expired or was revoked; `familiar run` refreshes it, "
            f"or log in again with `familiar twitch login --as {token.role}`"
        )
    lacking = {
        kind: missing
        for kind, scopes in needed_scopes(config, token.role, same_account=same_account).items()
        if (missing := missing_scopes(info.scopes, scopes))
    }
    state = f"valid for {_duration(info.expires_in_s)}"
    if not lacking:
        return f"{head}: {state}, scopes OK"
    parts = "; ".join(
        f"{FEATURES[kind].label} need {', '.join(scopes)}"
        for kind, scopes in sorted(lacking.items())
    )
    return (
        f"{head}: {state}, MISSING SCOPES: {parts} (run `familiar twitch login --as "
        f"{token.role}` again)"
    )


async def describe_twitch(settings: Settings, character: Character) -> list[str]:
    """Lines for ``familiar check`` about the Twitch accounts (network: ``oauth2/validate``)."""
    if not settings.twitch_configured:
        return []
    if not settings.master_keys():
        return ["Twitch tokens: cannot be read (set FAMILIAR_MASTER_KEY)"]
    db_path = settings.familiar_dir / "familiar.db"
    if not db_path.exists():
        return ["Twitch tokens: none stored (run `familiar twitch login --as bot`)"]
    configured = getattr(character.config, "twitch", None)
    config = configured if isinstance(configured, TwitchSection) else TwitchSection()
    lines: list[str] = []
    try:
        async with await open_database(db_path) as db:
            tokens = await TwitchTokenStore(Vault(db, settings.master_keys())).load_all()
    except FamiliarError as exc:
        return [f"Twitch tokens: cannot be read ({exc})"]
    bot = tokens.get("bot")
    channel = (settings.twitch_channel or "").lstrip("#").lower()
    same_account = "broadcaster" not in tokens and bot is not None and bot.login.lower() == channel
    assert settings.twitch_client_id is not None
    async with IdentityClient(settings.twitch_id_base, settings.twitch_client_id) as identity:
        for role in ROLES:
            token = tokens.get(role)
            if token is None and role == "broadcaster" and same_account:
                lines.append("Twitch broadcaster: the bot account owns the channel (one token)")
                continue
            if token is None:
                lines.append(
                    f"Twitch {role}: not logged in (run `familiar twitch login --as {role}`)"
                )
                continue
            try:
                lines.append(await _describe_token(identity, token, config, same_account))
            except FamiliarError as exc:
                lines.append(f"Twitch {role}: {token.login}: cannot be checked ({exc})")
    return lines
