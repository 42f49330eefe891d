"""``familiar twitch login --as bot|broadcaster``: Twitch's Device Code Grant, into the vault.

No local web server and no redirect URL: the command asks Twitch for a device code, shows the
person the verification URL and the short code to enter there (on any device), and polls until
they have authorised the application, declined, or the code expired. It requests exactly the
scopes the familiar's enabled ``[twitch]`` features need for that account (see
:mod:`.scopes`), checks that the account that authorised is the right one (the channel's owner
for ``--as broadcaster``; ``TWITCH_BOT_LOGIN`` for ``--as bot`` when set), and stores the token
pair encrypted in the familiar's vault. It never prints or logs a token.

:class:`DevicePoll` is the sans-I/O part: given each poll's answer it says wait, slow down,
done, or fail, honouring Twitch's ``interval`` and the code's lifetime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog

from familiar_connect.character import Character
from familiar_connect.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderProtocolError,
    ProviderTimeout,
)
from familiar_connect.logs import log_redactor
from familiar_connect.platforms.twitch.config import TwitchSection
from familiar_connect.platforms.twitch.identity import DeviceCode, IdentityClient, TokenResponse
from familiar_connect.platforms.twitch.scopes import FEATURES, Role, missing_scopes, scopes_for
from familiar_connect.platforms.twitch.tokens import StoredToken, TwitchTokenStore, now_display
from familiar_connect.settings import Settings
from familiar_connect.storage.db import open_database
from familiar_connect.storage.vault import Vault

__all__ = ["DevicePoll", "device_login", "login_scopes", "run_device_login"]

log = structlog.get_logger(__name__)

_SLOW_DOWN_STEP_S = 5.0
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll's answer means.

    Attributes:
        state: ``"pending"`` (poll again after ``wait_s``) or ``"granted"`` (``body`` holds the
            tokens).
    """

    state: Literal["pending", "granted"]
    wait_s: float = 0.0
    body: Mapping[str, Any] | None = None


class DevicePoll:
    """The polling side of a Device Code Grant, sans I/O.

    Args:
        code: what ``POST oauth2/device`` answered.
        started_ns: when it answered (:func:`time.monotonic_ns`).
        min_interval_s: never poll faster than this, whatever Twitch says.
    """

    def __init__(self, code: DeviceCode, *, started_ns: int, min_interval_s: float = 1.0) -> None:
        self.interval_s = max(code.interval_s, min_interval_s)
        self.deadline_ns = started_ns + int(code.expires_in_s * _NS_PER_S)
        self.polls = 0

    def first_wait_s(self) -> float:
        return self.interval_s

    def on_answer(self, answer: TokenResponse, now_ns: int) -> PollOutcome:
        """Interpret one poll's answer.

        Raises:
            ProviderAuthError: the person declined, or Twitch no longer knows the code.
            ProviderTimeout: the code expired before the person finished.
            ProviderProtocolError: Twitch answered something else.
        """
        self.polls += 1
        if answer.status == 200:
            if not answer.body.get("access_token") or not answer.body.get("refresh_token"):
                raise ProviderProtocolError(
                    "Twitch granted the login but sent no token pair", provider="twitch"
                )
            return PollOutcome("granted", body=answer.body)
        message = str(answer.body.get("message", "")).strip().lower()
        if now_ns >= self.deadline_ns or message == "expired_token":
            raise ProviderTimeout(
                "the device code expired before the login was finished; run the command again",
                provider="twitch",
            )
        if message == "authorization_pending":
            return PollOutcome("pending", wait_s=self.interval_s)
        if message == "slow_down":
            self.interval_s += _SLOW_DOWN_STEP_S
            return PollOutcome("pending", wait_s=self.interval_s)
        if message in ("access_denied", "invalid device code"):
            raise ProviderAuthError(
                "the login was declined on Twitch (or the code is no longer valid)",
                provider="twitch",
                status=answer.status,
            )
        raise ProviderProtocolError(
            f"Twitch answered the device login poll with {answer.status}: {message[:120]}",
            provider="twitch",
            status=answer.status,
        )


def _twitch_config(character: Character) -> TwitchSection:
    configured = getattr(character.config, "twitch", None)
    return configured if isinstance(configured, TwitchSection) else TwitchSection()


def login_scopes(settings: Settings, config: TwitchSection, role: Role) -> tuple[str, ...]:
    """The scopes to request for ``role``: its features' that ``config`` enables.

    The bot always gets the chat scopes. When ``TWITCH_BOT_LOGIN`` is the channel itself, one
    account plays both roles and gets both sets.
    """
    kinds = [kind for kind in FEATURES if kind == "chat" or config.kind(kind).enabled]
    bot, channel = (
        (settings.twitch_bot_login or "").lower(),
        (settings.twitch_channel or "").lower(),
    )
    return scopes_for(role, kinds, same_account=bool(bot) and bot == channel.lstrip("#"))


async def device_login(
    identity: IdentityClient,
    *,
    role: Role,
    scopes: Sequence[str],
    out: TextIO,
    min_interval_s: float = 1.0,
) -> StoredToken:
    """Run one Device Code Grant and return the validated token pair (not stored yet).

    Cancellation: safe at any point; nothing is stored.

    Raises:
        ProviderAuthError, ProviderTimeout, ProviderError: see :meth:`DevicePoll.on_answer`.
    """
    code = await identity.start_device_flow(scopes)
    print(
        f"To log the {role} account in, open {code.verification_uri}\n"
        f"and enter the code {code.user_code} (it expires in {int(code.expires_in_s // 60)} "
        "minutes). Make sure you are logged in to Twitch as the right account.",
        file=out,
        flush=True,
    )
    poll = DevicePoll(code, started_ns=time.monotonic_ns(), min_interval_s=min_interval_s)
    wait_s = poll.first_wait_s()
    while True:
        await asyncio.sleep(wait_s)
        outcome = poll.on_answer(
            await identity.poll_device_token(code, scopes), time.monotonic_ns()
        )
        if outcome.state == "granted":
            break
        wait_s = outcome.wait_s
    assert outcome.body is not None
    access = str(outcome.body["access_token"])
    refresh = str(outcome.body["refresh_token"])
    log_redactor().add_secrets([access, refresh])
    info = await identity.validate(access)
    if info is None or not info.user_id:
        raise ProviderAuthError(
            "Twitch issued a token it does not validate; try again", provider="twitch", status=401
        )
    return StoredToken(
        role=role,
        user_id=info.user_id,
        login=info.login,
        access_token=access,
        refresh_token=refresh,
        scopes=info.scopes,
        obtained_at=now_display(),
    )


def _check_account(settings: Settings, token: StoredToken) -> None:
    channel = (settings.twitch_channel or "").strip().lstrip("#").lower()
    if token.role == "broadcaster":
        matches = token.user_id == channel if channel.isdigit() else token.login.lower() == channel
        if not matches:
            raise ConfigError(
                f"The account that logged in is {token.login}, but TWITCH_CHANNEL is {channel}. "
                "Log in on Twitch as the channel's owner and run the command again."
            )
    wanted = (settings.twitch_bot_login or "").lower()
    if token.role == "bot" and wanted and token.login.lower() != wanted:
        raise ConfigError(
            f"The account that logged in is {token.login}, but TWITCH_BOT_LOGIN is {wanted}. "
            "Log in on Twitch as the bot account and run the command again."
        )


async def run_device_login(
    settings: Settings,
    character: Character,
    *,
    role: Role,
    out: TextIO,
    min_interval_s: float = 1.0,
) -> int:
    """``familiar twitch login --as <role>``: log in, check the account, store the tokens.

    Returns:
        The exit code (0).

    Raises:
        ConfigError: Twitch or the master key is not configured, or the wrong account logged in.
        ProviderError: the login failed (declined, expired, Twitch unreachable).
    """
    problems = []
    if not settings.twitch_client_id:
        problems.append("TWITCH_CLIENT_ID: not set (the application's client id)")
    if not settings.twitch_channel:
        problems.append("TWITCH_CHANNEL: not set (the channel's login name)")
    if not settings.master_keys():
        problems.append("FAMILIAR_MASTER_KEY: not set; the tokens are stored encrypted with it")
    if problems:
        raise ConfigError("Cannot log in to Twitch yet:", problems=tuple(problems))
    assert settings.twitch_client_id is not None
    scopes = login_scopes(settings, _twitch_config(character), role)
    print(f"Requesting these scopes for the {role}: {', '.join(scopes) or '(none)'}", file=out)
    async with IdentityClient(settings.twitch_id_base, settings.twitch_client_id) as identity:
        token = await device_login(
            identity, role=role, scopes=scopes, out=out, min_interval_s=min_interval_s
        )
    _check_account(settings, token)
    lacking = missing_scopes(token.scopes, scopes)
    if lacking:
        print(f"Warning: Twitch did not grant {', '.join(lacking)}.", file=out)
    familiar_dir = settings.familiar_dir
    await asyncio.to_thread(familiar_dir.mkdir, parents=True, exist_ok=True)
    async with await open_database(familiar_dir / "familiar.db") as db:
        await TwitchTokenStore(Vault(db, settings.master_keys())).save(token)
    print(
        f"Logged in as {token.login} ({role}). The token is stored encrypted in the "
        f"familiar's database; `familiar run` will use and refresh it.",
        file=out,
    )
    return 0
