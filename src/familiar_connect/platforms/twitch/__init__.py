"""Twitch: chat and channel events over EventSub (twitchio), replies in chat or out loud.

The public surface is re-exported lazily: :mod:`.config` (the ``[twitch]`` table of
``character.toml``) is plain pydantic and is imported by the character loader, which must not
pull in twitchio; everything else loads on first use.

- :class:`TwitchService`: the supervised adapter (:mod:`.service`);
- :class:`TwitchSection`: the ``[twitch]`` policy (:mod:`.config`);
- :class:`VoiceTarget`: the voice conversation reactions are spoken in (:mod:`.feed`);
- :func:`run_device_login`: ``familiar twitch login --as bot|broadcaster`` (:mod:`.device_flow`);
- :func:`describe_twitch`: the lines ``familiar check`` prints (:mod:`.check`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "TwitchSection",
    "TwitchService",
    "TwitchStatus",
    "VoiceTarget",
    "describe_twitch",
    "run_device_login",
]

_WHERE = {
    "TwitchSection": "familiar_connect.platforms.twitch.config",
    "TwitchService": "familiar_connect.platforms.twitch.service",
    "TwitchStatus": "familiar_connect.platforms.twitch.service",
    "VoiceTarget": "familiar_connect.platforms.twitch.feed",
    "describe_twitch": "familiar_connect.platforms.twitch.check",
    "run_device_login": "familiar_connect.platforms.twitch.device_flow",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
