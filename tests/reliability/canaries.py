"""Canary secrets and the scanner that looks for them in everything a familiar produced.

:data:`CANARIES` holds one distinct value per entry of
:data:`familiar_connect.settings.SECRET_FIELDS` (a new secret setting without a
canary fails :class:`~tests.reliability.test_canaries.TestCanaryProfile`), plus
a second master key version; :data:`TWITCH_TOKENS` adds the four Twitch OAuth tokens
the vault holds (not settings, secrets all the same). Values are shaped like nothing the redactor's
credential patterns know (no ``sk-`` prefix, no Discord token shape), so only
the configured-secret path can hide them, and they contain ``+``, ``/`` and
``=`` so their URL-encoded forms differ from the raw ones.

:func:`scan` looks for every form of every canary (raw, URL-encoded both ways,
JSON-escaped, and the random core alone, which catches a partial leak) in text
and bytes sources and returns where each one was found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.openrouter import FakeOpenRouter

__all__ = [
    "CANARIES",
    "MASTER_KEY_V2",
    "TWITCH_TOKENS",
    "Leak",
    "canary_env",
    "discord_sent",
    "files_under",
    "model_requests",
    "scan",
]

# name -> (value, random core). The core is the part no other text will ever contain.
_CANARIES: dict[str, tuple[str, str]] = {
    "discord_token": ("cnryDiscord+Q7k2V9xZa1Rm3Wq8/tok=", "Q7k2V9xZa1Rm3Wq8"),
    "openrouter_api_key": ("cnryOpenRouter+R8m3W0yAb2Sn4Xe7/key=", "R8m3W0yAb2Sn4Xe7"),
    "deepgram_api_key": ("cnryDeepgram+S9n4X1zBc3To5Yf6/key=", "S9n4X1zBc3To5Yf6"),
    "cartesia_api_key": ("cnryCartesia+T0o5Y2aCd4Up6Zg5/key=", "T0o5Y2aCd4Up6Zg5"),
    "azure_speech_key": ("cnryAzure+U1p6Z3bDe5Vq7Ah4/key=", "U1p6Z3bDe5Vq7Ah4"),
    # No "+": twitchio puts the client secret in a query string unencoded when it holds one
    # (Route.encode), where "+" reads as a space; real secrets are letters and digits.
    "twitch_client_secret": ("cnryTwitch-V2q7A4cEf6Wr8Bi3/sec=", "V2q7A4cEf6Wr8Bi3"),
    "familiar_master_key": ("cnryMaster+W3r8B5dFg7Xs9Cj2/v1=", "W3r8B5dFg7Xs9Cj2"),
    # No "+": the dashboard token travels in a query string (?token=), where "+" means space.
    "familiar_dashboard_token": ("cnryDashboard-X4s9C6eGh8Yt0Dk1/tok=", "X4s9C6eGh8Yt0Dk1"),
}
_MASTER_V2 = ("cnryMasterV2+Y5t0D7fHi9Zu1El0/v2=", "Y5t0D7fHi9Zu1El0")
# Not settings but secrets all the same: the Twitch OAuth pairs `familiar twitch login` keeps in
# the vault (the fake Twitch is made to issue exactly these).
_TWITCH_TOKENS: dict[str, tuple[str, str]] = {
    "twitch_bot_access": ("cnryTwBotAcc+Z7v2F9hJk1Bw3Gn8/tok=", "Z7v2F9hJk1Bw3Gn8"),
    "twitch_bot_refresh": ("cnryTwBotRef+A8w3G0iKl2Cx4Ho7/ref=", "A8w3G0iKl2Cx4Ho7"),
    "twitch_broadcaster_access": ("cnryTwCastAcc+B9x4H1jLm3Dy5Ip6/tok=", "B9x4H1jLm3Dy5Ip6"),
    "twitch_broadcaster_refresh": ("cnryTwCastRef+C0y5I2kMn4Ez6Jq5/ref=", "C0y5I2kMn4Ez6Jq5"),
}

CANARIES: dict[str, str] = {name: value for name, (value, _core) in _CANARIES.items()}
"""Secret setting name -> its canary value."""
MASTER_KEY_V2 = _MASTER_V2[0]
"""The canary for ``FAMILIAR_MASTER_KEY_V2`` (a key version, collected by load_settings)."""
TWITCH_TOKENS: dict[str, str] = {name: value for name, (value, _core) in _TWITCH_TOKENS.items()}
"""Canary Twitch tokens (bot and broadcaster, access and refresh) for the vault."""

_ALL: dict[str, tuple[str, str]] = {
    **_CANARIES,
    "familiar_master_key_v2": _MASTER_V2,
    **_TWITCH_TOKENS,
}


@dataclass(frozen=True, slots=True)
class Leak:
    """One canary found somewhere: which secret, in what form, where."""

    where: str
    secret: str
    form: str

    def __str__(self) -> str:
        return f"{self.secret} ({self.form}) in {self.where}"


def _forms(value: str, core: str) -> dict[str, str]:
    return {
        "raw": value,
        "url-encoded": quote(value, safe=""),
        "form-encoded": quote_plus(value),
        "json-escaped": json.dumps(value)[1:-1],
        "partial (random core)": core,
    }


_FORMS: dict[str, dict[str, str]] = {name: _forms(*pair) for name, pair in _ALL.items()}


def canary_env(*, dashboard: bool = True) -> dict[str, str]:
    """Environment variables setting every canary (and ``FAMILIAR_MASTER_KEY_V2``)."""
    env = {name.upper(): value for name, value in CANARIES.items()}
    env["FAMILIAR_MASTER_KEY_V2"] = MASTER_KEY_V2
    if not dashboard:
        env.pop("FAMILIAR_DASHBOARD_TOKEN")
    return env


def scan(
    sources: Iterable[tuple[str, str | bytes]], *, also: Mapping[str, str] | None = None
) -> list[Leak]:
    """Every canary form found in ``sources`` (``(where, text or bytes)`` pairs).

    ``also`` adds secrets only known at run time (name -> value, e.g. the tokens a fake
    issued on a refresh); the whole value is its own core.
    """
    extra = {name: _forms(value, value) for name, value in (also or {}).items()}
    leaks: list[Leak] = []
    for where, content in sources:
        for secret, forms in {**_FORMS, **extra}.items():
            for form, needle in forms.items():
                found = (
                    needle.encode("utf-8") in content
                    if isinstance(content, bytes)
                    else needle in content
                )
                if found:
                    leaks.append(Leak(where, secret, form))
                    break
    return leaks


def files_under(root: Path) -> list[tuple[str, bytes]]:
    """Every regular file under ``root`` (database and its -wal/-shm, notes, logs), as bytes."""
    found: list[tuple[str, bytes]] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append((f"file {path.relative_to(root)}", path.read_bytes()))
    return found


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def discord_sent(fake: FakeDiscord) -> list[tuple[str, str | bytes]]:
    """Everything the bot sent to Discord that people can see: bodies and files, not headers."""
    sources: list[tuple[str, str | bytes]] = []
    for call in fake.rest_calls:
        where = f"discord {call.method} {call.path}"
        if call.json is not None:
            sources.append((where, _json_text(call.json)))
        if call.form:
            sources.append((where + " (form)", _json_text(dict(call.form))))
        for sent in call.files:
            sources.append((f"{where} file {sent.filename}", sent.data))
    return sources


def model_requests(fake: FakeOpenRouter) -> list[tuple[str, str | bytes]]:
    """What the familiar sent the model (request bodies; the Authorization header is the job)."""
    return [
        (f"model request #{index}", request.body)
        for index, request in enumerate(fake.chat_requests, start=1)
    ]
