"""The one place where library globals are pointed at the configured endpoints.

Most clients take their endpoint as a constructor argument. A few libraries
read a class or module global instead (discord.py's REST base and gateway URL;
twitchio's Helix and identity bases and EventSub URL). Those
assignments live here and nowhere else, so tests can point the real libraries
at loopback fakes through settings alone, and :func:`apply_library_endpoints`
returns a function that restores what it changed.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import structlog

from familiar_connect.settings import Settings

__all__ = ["apply_library_endpoints"]

log = structlog.get_logger(__name__)


def _set(target: Any, name: str, value: Any, undo: list[Callable[[], None]]) -> None:
    previous = getattr(target, name)
    setattr(target, name, value)
    undo.append(lambda: setattr(target, name, previous))


def apply_library_endpoints(settings: Settings) -> Callable[[], None]:
    """Point library globals at the endpoints in ``settings``; return an undo function.

    Process-wide: one familiar per process (DESIGN §7), so one set of globals.
    """
    undo: list[Callable[[], None]] = []
    import discord.gateway
    import discord.http
    import yarl

    _set(discord.http.Route, "BASE", settings.discord_api_base.rstrip("/"), undo)
    _set(
        discord.gateway.DiscordWebSocket,
        "DEFAULT_GATEWAY",
        yarl.URL(settings.discord_gateway_url),
        undo,
    )
    if settings.twitch_configured or "twitchio" in sys.modules:
        _apply_twitchio(settings, undo)
    log.debug(
        "library_endpoints_applied",
        discord_api_base=settings.discord_api_base,
        discord_gateway_url=settings.discord_gateway_url,
        twitch_helix_base=settings.twitch_helix_base,
        twitch_id_base=settings.twitch_id_base,
        twitch_eventsub_ws=settings.twitch_eventsub_ws,
    )

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _apply_twitchio(settings: Settings, undo: list[Callable[[], None]]) -> None:
    """twitchio's Helix and identity bases (joined with paths, so they end in ``/``) and WSS.

    twitchio is imported only when Twitch is configured (or already loaded), so a Discord-only
    process never pays for it.
    """
    with warnings.catch_warnings():
        # twitchio's web adapter subclasses aiohttp's Application, which aiohttp discourages.
        warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
        import twitchio.eventsub.websockets
        import twitchio.http

    _set(twitchio.http.Route, "BASE", _with_slash(settings.twitch_helix_base), undo)
    _set(twitchio.http.Route, "ID_BASE", _with_slash(settings.twitch_id_base), undo)
    _set(twitchio.eventsub.websockets, "WSS", settings.twitch_eventsub_ws, undo)
