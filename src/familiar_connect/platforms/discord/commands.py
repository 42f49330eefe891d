"""Slash commands: where the familiar listens, what it saw, and people's control of their data.

Admin commands (``/subscribe-text``, ``/unsubscribe-text``, ``/context``) are
declared with Manage Server as their default member permission, so Discord
hides them from others, and are checked again when they run (server admins can
change who sees a command): a caller needs Manage Server in that server or to
be in ``DISCORD_OPERATOR_IDS``. ``/familiar-status`` and the privacy commands
are for everyone; privacy commands only ever act on the caller's own data.
Every answer is ephemeral: only the caller sees it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
import structlog
from discord import app_commands

from familiar_connect.core.events import Platform
from familiar_connect.errors import FamiliarError
from familiar_connect.logs import log_redactor, safe_error_text

if TYPE_CHECKING:
    from familiar_connect.platforms.discord.client import DiscordService

__all__ = ["register_commands"]

log = structlog.get_logger(__name__)

NOT_ALLOWED = "You need the Manage Server permission (or to be an operator) to do that."
VOICE_NOT_CONFIGURED = (
    "Voice isn't set up for this familiar (the operator needs STT_PROVIDER and TTS_PROVIDER)."
)
_JOIN_ANSWERS = {
    "joined": "Joined {channel}. Talk to me!",
    "already_here": "I'm already in {channel}.",
    "busy": "I'm already talking in another voice channel; I can only be in one at a time.",
}
_MANAGE = discord.Permissions(manage_guild=True)
_CONFIRM_TIMEOUT_S = 120.0


def _is_admin(interaction: discord.Interaction, service: DiscordService) -> bool:
    if str(interaction.user.id) in service.operator_ids:
        return True
    permissions = interaction.permissions
    return interaction.guild is not None and (permissions.manage_guild or permissions.administrator)


async def _say(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(
        text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
    )


def _may_use_voice(interaction: discord.Interaction, service: DiscordService) -> bool:
    return service.character.config.voice.open_to_everyone or _is_admin(interaction, service)


def _render_prompt(messages: list[dict[str, str]]) -> str:
    parts = [f"## {message['role']}\n\n{message['content']}" for message in messages]
    return log_redactor().redact("\n\n".join(parts))


class _ConfirmDelete(discord.ui.View):
    """The ephemeral "really delete my data?" buttons; only the caller can press them."""

    def __init__(self, service: DiscordService, user_id: int) -> None:
        super().__init__(timeout=_CONFIRM_TIMEOUT_S)
        self.service = service
        self.user_id = user_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Delete my data", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, _button: discord.ui.Button) -> None:
        report = await self.service.familiar.privacy_service.delete(
            Platform.DISCORD.value, str(self.user_id)
        )
        self.stop()
        note = "your people note" if report.note_deleted else "no people note (there was none)"
        await interaction.response.edit_message(
            content=f"Deleted {report.turns_deleted} messages and {note}.", view=None
        )

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, _button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)


def register_commands(tree: app_commands.CommandTree, service: DiscordService) -> None:
    """Add every slash command to ``tree``."""

    @tree.error
    async def on_command_error(
        interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        # A failing command still answers the person, who would otherwise see "did not respond".
        name = interaction.command.name if interaction.command is not None else "?"
        log.error("discord_command_failed", command=name, error=safe_error_text(error))
        text = "Something went wrong on my side; the operator can find the details in the log."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("discord_command_error_not_shown", command=name)

    @tree.command(
        name="subscribe-text", description="Let the familiar hear everything in this channel"
    )
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def subscribe_text(interaction: discord.Interaction) -> None:
        if not _is_admin(interaction, service):
            await _say(interaction, NOT_ALLOWED)
            return
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel | discord.Thread | discord.ForumChannel):
            await _say(interaction, "I can only subscribe to text channels, threads and forums.")
            return
        added = await service.subscribe(channel, by=f"discord:{interaction.user.id}")
        log.info("discord_channel_subscribed", channel_id=channel.id, by=interaction.user.id)
        await _say(
            interaction,
            f"I'm now listening to everything in {channel.mention}."
            if added
            else f"I was already listening in {channel.mention}.",
        )

    @tree.command(name="unsubscribe-text", description="Stop the familiar hearing this channel")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def unsubscribe_text(interaction: discord.Interaction) -> None:
        if not _is_admin(interaction, service):
            await _say(interaction, NOT_ALLOWED)
            return
        channel = interaction.channel
        removed = await service.unsubscribe(channel.id if channel is not None else 0)
        log.info("discord_channel_unsubscribed", channel_id=getattr(channel, "id", None))
        await _say(
            interaction,
            "I'll only answer here when mentioned now."
            if removed
            else "I wasn't subscribed to this channel.",
        )

    @tree.command(name="join-voice", description="Join your voice channel and talk there")
    @app_commands.guild_only()
    async def join_voice(interaction: discord.Interaction) -> None:
        voice = service.voice
        if voice is None:
            await _say(interaction, VOICE_NOT_CONFIGURED)
            return
        if not _may_use_voice(interaction, service):
            await _say(interaction, NOT_ALLOWED)
            return
        state = getattr(interaction.user, "voice", None)
        channel = state.channel if state is not None else None
        if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            await _say(interaction, "Join a voice channel first, then ask me again.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        text_channel = interaction.channel
        try:
            result = await voice.join(
                channel,
                text_channel=text_channel
                if isinstance(text_channel, discord.abc.Messageable)
                else None,
            )
        except FamiliarError as exc:
            log.warning("voice_join_failed", channel_id=channel.id, error=safe_error_text(exc))
            await interaction.followup.send(
                "I couldn't join that voice channel; the operator can find why in the log.",
                ephemeral=True,
            )
            return
        log.info(
            "voice_join_requested", channel_id=channel.id, by=interaction.user.id, result=result
        )
        await interaction.followup.send(
            _JOIN_ANSWERS[result].format(channel=channel.mention), ephemeral=True
        )

    @tree.command(name="leave-voice", description="Leave the voice channel")
    @app_commands.guild_only()
    async def leave_voice(interaction: discord.Interaction) -> None:
        voice = service.voice
        if voice is None or not voice.connected:
            await _say(interaction, "I'm not in a voice channel.")
            return
        if not _may_use_voice(interaction, service):
            await _say(interaction, NOT_ALLOWED)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await voice.leave(reason="command")
        await interaction.followup.send("Left the voice channel.", ephemeral=True)

    if not service.character.config.voice.open_to_everyone:
        # Hidden from members without Manage Server (still checked when run).
        join_voice.default_permissions = _MANAGE
        leave_voice.default_permissions = _MANAGE

    @tree.command(name="familiar-status", description="What the familiar listens to and runs")
    async def familiar_status(interaction: discord.Interaction) -> None:
        guild = interaction.guild
        mine = sorted(
            channel_id
            for channel_id in service.subscribed
            if guild is not None and guild.get_channel_or_thread(int(channel_id)) is not None
        )
        orchestrator = service.familiar.orchestrator
        lines = [
            f"**{service.character.display_name}**"
            + (" — paused by the operator" if orchestrator.paused else ""),
            "Listening in: " + (", ".join(f"<#{c}>" for c in mine) if mine else "no channels"),
            "Voice: "
            + (
                "not configured"
                if service.voice is None
                else f"in <#{service.voice.channel.id}>"
                if service.voice.connected and service.voice.channel is not None
                else "not in a channel"
            ),
            "Twitch: " + ("configured" if service.settings.twitch_configured else "off"),
            f"Model: {service.character.config.llm.reply.model}",
            f"Active conversations: {len(orchestrator.active_conversations())}",
        ]
        await _say(interaction, "\n".join(lines))

    @tree.command(name="context", description="The last prompt the familiar saw in this channel")
    @app_commands.default_permissions(manage_guild=True)
    async def context(interaction: discord.Interaction) -> None:
        if not _is_admin(interaction, service):
            await _say(interaction, NOT_ALLOWED)
            return
        channel = interaction.channel
        guild_id = str(interaction.guild.id) if interaction.guild is not None else None
        key = f"discord:{channel.id if channel is not None else 0}"
        prompt = service.familiar.orchestrator.last_prompts.get(key)
        if prompt is None:
            await _say(interaction, "I haven't answered anything in this channel yet.")
            return
        data = _render_prompt(prompt).encode("utf-8")
        log.info("discord_context_shown", channel=key, guild_id=guild_id, bytes=len(data))
        await interaction.response.send_message(
            "The last prompt I saw here (secrets redacted):",
            file=discord.File(io.BytesIO(data), filename="context.md"),
            ephemeral=True,
        )

    privacy = app_commands.Group(name="privacy", description="Control what the familiar keeps")

    @privacy.command(name="opt-out", description="Never answer me, store or remember me")
    async def opt_out(interaction: discord.Interaction) -> None:
        await service.familiar.privacy_service.opt_out(
            Platform.DISCORD.value, str(interaction.user.id)
        )
        if service.voice is not None:
            service.voice.forget(Platform.DISCORD.value, str(interaction.user.id))
        await _say(
            interaction,
            "Done: I won't answer you or keep anything you say from now on. "
            "Use /my-data delete to remove what I already have, /privacy opt-in to undo.",
        )

    @privacy.command(name="opt-in", description="Let the familiar talk with you again")
    async def opt_in(interaction: discord.Interaction) -> None:
        await service.familiar.privacy_service.opt_in(
            Platform.DISCORD.value, str(interaction.user.id)
        )
        await _say(interaction, "Welcome back: I'll talk with you again.")

    tree.add_command(privacy)

    my_data = app_commands.Group(name="my-data", description="See or delete what the familiar has")

    @my_data.command(name="export", description="Get everything the familiar stored about you")
    async def export(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await service.familiar.privacy_service.export(
            Platform.DISCORD.value, str(interaction.user.id)
        )
        await interaction.followup.send(
            "Everything I have stored about you:",
            file=discord.File(io.BytesIO(data), filename="my-data.json"),
            ephemeral=True,
        )

    @my_data.command(name="delete", description="Delete your messages and notes (asks first)")
    async def delete(interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            "This deletes every message of yours I stored and my notes about you. Sure?",
            view=_ConfirmDelete(service, interaction.user.id),
            ephemeral=True,
        )

    tree.add_command(my_data)
