"""Discord: text channels, DMs and slash commands through discord.py (voice joins later)."""

from __future__ import annotations

from familiar_connect.platforms.discord.client import DiscordService, build_intents

__all__ = ["DiscordService", "build_intents"]
