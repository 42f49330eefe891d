"""Discord end to end: the real discord.py client against the fake gateway and REST API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from familiar_connect.app import open_familiar
from familiar_connect.character import load_character
from familiar_connect.errors import ConfigError, ProviderAuthError
from familiar_connect.platforms.discord import DiscordService
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import ALICE_ID, BOT_USER_ID, GENERAL_ID, RANDOM_ID
from tests.fakes.openrouter import FakeOpenRouter
from tests.platforms.discord.conftest import (
    BOT_TOKEN,
    DiscordHarness,
    HarnessFactory,
    discord_settings,
)


async def subscribe(harness: DiscordHarness, channel_id: int = GENERAL_ID) -> None:
    interaction = await harness.discord.slash("subscribe-text", channel_id=channel_id)
    await harness.discord.wait_for(lambda: harness.discord.interaction_callbacks(interaction))


def posted(harness: DiscordHarness, channel_id: int = GENERAL_ID) -> list[str]:
    return [call.json["content"] for call in harness.discord.messages_sent(channel_id)]


async def history(harness: DiscordHarness, channel_id: int = GENERAL_ID) -> list[tuple[str, str]]:
    turns = await harness.familiar.history.recent("discord", f"discord:{channel_id}", limit=100)
    return [(turn.role, turn.content) for turn in turns]


class TestTextReplies:
    async def test_mention_gets_typing_then_reply(self, start_familiar: HarnessFactory) -> None:
        """A mention is answered by the engine: typing first, then a reply to the message."""
        harness = await start_familiar()
        harness.llm.reply_text("Hello Alice, nice to meet you.")
        sent = await harness.discord.user_says("hi there", mentions_bot=True)
        await harness.discord.wait_for(lambda: harness.discord.messages_sent(GENERAL_ID))
        reply = harness.discord.messages_sent(GENERAL_ID)[0]
        typing = harness.discord.typing_calls(GENERAL_ID)
        assert typing and typing[0].t_ns < reply.t_ns
        assert reply.json["content"] == "Hello Alice, nice to meet you."
        assert str(reply.json["message_reference"]["message_id"]) == sent["id"]
        mentions = reply.json["allowed_mentions"]
        assert mentions["parse"] == [] and mentions["replied_user"] is False
        prompt = harness.llm.chat_requests[0].json["messages"][-1]["content"]
        assert "@Familiar hi there" in prompt
        await harness.idle()
        assert await history(harness) == [
            ("user", "@Familiar hi there"),
            ("assistant", "Hello Alice, nice to meet you."),
        ]

    async def test_unsubscribed_chatter_is_neither_read_nor_stored(
        self, start_familiar: HarnessFactory
    ) -> None:
        """Without a subscription or mention, a message never reaches the model or history."""
        harness = await start_familiar()
        await harness.discord.user_says("just chatting with bob", channel_id=RANDOM_ID)
        await asyncio.sleep(0.2)
        await harness.familiar.history_writer.flush()
        assert harness.llm.chat_requests == []
        assert await history(harness, RANDOM_ID) == []

    async def test_long_reply_split_in_order(self, start_familiar: HarnessFactory) -> None:
        """A 4,000-character reply arrives as several messages in order, none over 2,000."""
        harness = await start_familiar("[limits]\nmax_reply_chars = 6000\n")
        paragraphs = [f"Paragraph {i}: " + ("word " * 70).strip() + "." for i in range(11)]
        long_reply = "\n\n".join(paragraphs)
        assert len(long_reply) > 4000
        harness.llm.reply_text(long_reply)
        await harness.discord.user_says("tell me a lot", mentions_bot=True)
        await harness.discord.wait_for(lambda: len(posted(harness)) >= 3)
        await harness.idle()
        parts = posted(harness)
        assert all(len(part) <= 2000 for part in parts)
        assert "".join(parts).replace("\n", "") == long_reply.replace("\n", "")
        assert "message_reference" in harness.discord.messages_sent(GENERAL_ID)[0].json
        assert "message_reference" not in harness.discord.messages_sent(GENERAL_ID)[1].json

    async def test_everyone_and_role_mentions_never_ping(
        self, start_familiar: HarnessFactory
    ) -> None:
        """A reply full of @everyone and role mentions is sent with no pings allowed."""
        harness = await start_familiar()
        harness.llm.reply_text("@everyone @here <@&123> look at this <@1002>")
        await harness.discord.user_says("ping everyone", mentions_bot=True)
        await harness.discord.wait_for(lambda: harness.discord.messages_sent(GENERAL_ID))
        mentions = harness.discord.messages_sent(GENERAL_ID)[0].json["allowed_mentions"]
        assert mentions["parse"] == []
        assert mentions.get("users", []) == [] and mentions.get("roles", []) == []

    async def test_attachment_only_message_is_described(
        self, start_familiar: HarnessFactory
    ) -> None:
        """A message with only an attachment reaches the model as a short description."""
        harness = await start_familiar()
        harness.llm.reply_text("Nice picture.")
        await harness.discord.user_says(
            "", mentions_bot=True, attachments=[("cat.png", b"\x89PNG fake")]
        )
        await harness.discord.wait_for(lambda: harness.discord.messages_sent(GENERAL_ID))
        prompt = harness.llm.chat_requests[0].json["messages"][-1]["content"]
        assert "[attached: cat.png" in prompt

    async def test_messages_during_reply_fold_into_next(
        self, start_familiar: HarnessFactory
    ) -> None:
        """Messages sent while the familiar is answering are answered together next."""
        harness = await start_familiar()
        await subscribe(harness)
        harness.llm.reply_text("First.", ttft_s=0.4)
        harness.llm.reply_text("Second, for both.")
        await harness.discord.user_says("one", mentions_bot=True)
        await harness.discord.wait_for(lambda: harness.llm.chat_requests)
        await harness.discord.user_says("two", author="bob")
        await harness.discord.user_says("three", mentions_bot=True)
        await harness.discord.wait_for(lambda: len(posted(harness)) >= 2)
        assert posted(harness) == ["First.", "Second, for both."]
        folded = harness.llm.chat_requests[1].json["messages"][-1]["content"]
        assert "two" in folded and "three" in folded

    async def test_reply_survives_gateway_reconnect(self, start_familiar: HarnessFactory) -> None:
        """After a gateway RECONNECT the client resumes and the next mention is answered."""
        harness = await start_familiar()
        await harness.discord.reconnect()
        await asyncio.wait_for(harness.discord.resumed.wait(), timeout=10)
        harness.llm.reply_text("Still here.")
        await harness.discord.user_says("are you there?", mentions_bot=True)
        await harness.discord.wait_for(lambda: posted(harness), timeout_s=10)
        assert posted(harness) == ["Still here."]

    async def test_rate_limited_send_is_retried(self, start_familiar: HarnessFactory) -> None:
        """A 429 on the reply is retried by discord.py and the reply still arrives once."""
        harness = await start_familiar()
        harness.discord.fail_next("POST", r"/channels/500/messages", status=429)
        harness.llm.reply_text("Patience pays.")
        await harness.discord.user_says("hello", mentions_bot=True)
        await harness.discord.wait_for(lambda: posted(harness), timeout_s=10)
        assert posted(harness) == ["Patience pays."]


class TestDirectMessages:
    async def test_dm_from_stranger_gets_one_refusal(self, start_familiar: HarnessFactory) -> None:
        """A DM from someone not on the allow list is refused once and never answered."""
        harness = await start_familiar()
        await harness.discord.dm("hello?", author="bob")
        await harness.discord.dm("hello again?", author="bob")
        await harness.discord.wait_for(lambda: harness.discord.messages_sent())
        await asyncio.sleep(0.2)
        refusals = harness.discord.messages_sent()
        assert len(refusals) == 1 and "only talk in DMs" in refusals[0].json["content"]
        assert harness.llm.chat_requests == []

    async def test_dm_from_allowed_user_is_answered(self, start_familiar: HarnessFactory) -> None:
        """An allow-listed user's DM is answered without a mention."""
        harness = await start_familiar(discord_dm_allowlist=str(ALICE_ID))
        harness.llm.reply_text("Hi in private.")
        await harness.discord.dm("psst", author="alice")
        await harness.discord.wait_for(lambda: harness.discord.messages_sent())
        assert harness.discord.messages_sent()[0].json["content"] == "Hi in private."


class TestSlashCommands:
    async def test_commands_synced_to_guild(self, start_familiar: HarnessFactory) -> None:
        """Every slash command is synced to the guild at start, admin ones with Manage Server."""
        harness = await start_familiar()
        commands = {c["name"]: c for c in harness.discord.synced_commands(900)}
        assert set(commands) >= {
            "subscribe-text",
            "unsubscribe-text",
            "familiar-status",
            "context",
            "privacy",
            "my-data",
        }
        assert int(commands["subscribe-text"]["default_member_permissions"]) == 32

    async def test_subscription_by_admin_persists_across_restart(
        self, start_familiar: HarnessFactory
    ) -> None:
        """/subscribe-text by an admin is kept after a restart: unaddressed chat is heard."""
        harness = await start_familiar()
        interaction = await harness.discord.slash("subscribe-text")
        (answer,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(interaction)
        )
        assert answer.flags & 64 and "listening" in answer.data["content"]
        await harness.stop()

        restarted = await start_familiar()
        assert str(GENERAL_ID) in restarted.service.subscribed
        restarted.llm.reply_text("<silent>")
        await restarted.discord.user_says("nice weather today", author="bob")
        await restarted.discord.wait_for(lambda: restarted.llm.chat_requests)

    async def test_non_admin_is_refused_and_nothing_changes(
        self, start_familiar: HarnessFactory
    ) -> None:
        """/subscribe-text from a member without Manage Server is refused ephemerally."""
        harness = await start_familiar()
        interaction = await harness.discord.slash("subscribe-text", user="bob")
        (answer,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(interaction)
        )
        assert answer.flags & 64 and "Manage Server" in answer.data["content"]
        assert harness.service.subscribed == set()
        assert await harness.familiar.subscriptions.list() == []

    async def test_context_shows_last_prompt_redacted(self, start_familiar: HarnessFactory) -> None:
        """/context returns the channel's last prompt as a file with secrets redacted."""
        harness = await start_familiar()
        harness.llm.reply_text("ok")
        await harness.discord.user_says(f"my key is {BOT_TOKEN_TEXT}", mentions_bot=True)
        await harness.discord.wait_for(lambda: posted(harness))
        interaction = await harness.discord.slash("context")
        (answer,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(interaction)
        )
        (file,) = answer.files
        text = file.data.decode()
        assert file.filename == "context.md" and "my key is" in text
        assert BOT_TOKEN_TEXT not in text

    async def test_status_is_ephemeral(self, start_familiar: HarnessFactory) -> None:
        """/familiar-status answers only the caller, naming what is listened to."""
        harness = await start_familiar()
        await subscribe(harness)
        interaction = await harness.discord.slash("familiar-status", user="bob")
        (answer,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(interaction)
        )
        assert answer.flags & 64 and f"<#{GENERAL_ID}>" in answer.data["content"]


class TestPrivacy:
    async def test_opt_out_stops_replies_and_storage(self, start_familiar: HarnessFactory) -> None:
        """After /privacy opt-out a user's mentions are not answered and not stored."""
        harness = await start_familiar()
        interaction = await harness.discord.slash("privacy", subcommand="opt-out")
        await harness.discord.wait_for(lambda: harness.discord.interaction_callbacks(interaction))
        await harness.discord.user_says("hello?", mentions_bot=True)
        await asyncio.sleep(0.2)
        await harness.familiar.history_writer.flush()
        assert harness.llm.chat_requests == [] and posted(harness) == []
        assert await history(harness) == []
        assert await harness.familiar.privacy.is_opted_out("discord", str(ALICE_ID))

    async def test_export_returns_the_users_rows(self, start_familiar: HarnessFactory) -> None:
        """/my-data export sends the caller a JSON file with their stored messages."""
        harness = await start_familiar()
        harness.llm.reply_text("Noted.")
        await harness.discord.user_says("I like tea", mentions_bot=True)
        await harness.discord.wait_for(lambda: posted(harness))
        await harness.idle()
        interaction = await harness.discord.slash("my-data", subcommand="export")
        answers = await harness.discord.wait_for(
            lambda: [a for a in harness.discord.interaction_callbacks(interaction) if a.files]
        )
        document = json.loads(answers[0].files[0].data)
        assert document["user_id"] == str(ALICE_ID)
        assert [row["content"] for row in document["history"]] == ["@Familiar I like tea"]
        assert answers[0].flags & 64

    async def test_delete_after_confirmation_removes_rows_and_note(
        self, start_familiar: HarnessFactory
    ) -> None:
        """/my-data delete asks first; confirming deletes rows and the note with an audit record."""
        harness = await start_familiar()
        harness.familiar.memory.store.write_file(
            f"people/discord-{ALICE_ID}.md", "Alice likes tea.", source="memory_writer"
        )
        harness.llm.reply_text("Noted.")
        await harness.discord.user_says("remember me", mentions_bot=True)
        await harness.discord.wait_for(lambda: posted(harness))
        await harness.idle()
        interaction = await harness.discord.slash("my-data", subcommand="delete")
        (prompt,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(interaction)
        )
        assert await history(harness) != []
        button = prompt.components[0]["components"][0]
        click = await harness.discord.click(
            button["custom_id"], message=prompt.message or interaction
        )
        (done,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(click)
        )
        assert "Deleted 1 messages" in done.data["content"]
        assert [role for role, _ in await history(harness)] == ["assistant"]
        entry = harness.familiar.memory.audit_entries[-1]
        assert (entry.operation, entry.source) == ("delete", "user-request")

    async def test_delete_with_no_data(self, start_familiar: HarnessFactory) -> None:
        """Deleting for someone with nothing stored says so and changes nothing."""
        harness = await start_familiar()
        interaction = await harness.discord.slash("my-data", subcommand="delete", user="bob")
        (prompt,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(interaction)
        )
        button = prompt.components[0]["components"][0]
        click = await harness.discord.click(
            button["custom_id"], message=prompt.message or interaction, user="bob"
        )
        (done,) = await harness.discord.wait_for(
            lambda: harness.discord.interaction_callbacks(click)
        )
        assert "Deleted 0 messages" in done.data["content"]
        assert harness.familiar.memory.audit_entries == []


class TestStartupFailures:
    async def test_bad_token_is_fatal_auth_error(self, start_familiar: HarnessFactory) -> None:
        """A token Discord rejects ends the run with ProviderAuthError (exit 2 in the CLI)."""
        harness = await start_familiar(discord_token="bad-token-0123456789", wait_ready=False)
        with pytest.raises(ProviderAuthError, match="DISCORD_TOKEN"):
            await asyncio.wait_for(harness.task, timeout=10)

    async def test_missing_intents_name_them(
        self, tmp_path: Path, fake_llm: FakeOpenRouter
    ) -> None:
        """Privileged intents not enabled on the application end the run naming them."""
        async with FakeDiscord(bot_token=BOT_TOKEN, enabled_privileged_intents=0) as fake:
            settings = discord_settings(tmp_path, fake, fake_llm)
            character = load_character(settings.familiar_id, None)
            async with open_familiar(settings, character) as familiar:
                service = DiscordService(familiar, guild_ready_timeout_s=0.05)
                with pytest.raises(ConfigError, match="MESSAGE CONTENT INTENT"):
                    await asyncio.wait_for(service.run(), timeout=10)


BOT_TOKEN_TEXT = "sk-or-v1-discord-e2e-0123456789"  # the LLM key: a configured secret
_ = BOT_USER_ID


class TestHostileInput:
    async def test_embed_only_message_is_described(self, start_familiar: HarnessFactory) -> None:
        """A message that is only an embed reaches the model as a short note, not nothing."""
        harness = await start_familiar()
        harness.llm.reply_text("Interesting link.")
        await harness.discord.user_says("", mentions_bot=True, embeds=[{"title": "Cat facts"}])
        await harness.discord.wait_for(lambda: harness.discord.messages_sent(GENERAL_ID))
        prompt = harness.llm.chat_requests[0].json["messages"][-1]["content"]
        assert "[attached: embed: Cat facts]" in prompt

    async def test_zero_width_and_rtl_names_are_cleaned(
        self, start_familiar: HarnessFactory
    ) -> None:
        """A display name with zero-width and RTL-override characters is sanitised in the prompt."""
        harness = await start_familiar()
        harness.discord.world.add_member(
            900, 1003, "mallory", nick="Mal\u200blo\u202ery\u2066 <admin>"
        )
        harness.llm.reply_text("Hello.")
        await harness.discord.user_says("hi", author=1003, mentions_bot=True)
        await harness.discord.wait_for(lambda: harness.discord.messages_sent(GENERAL_ID))
        prompt = harness.llm.chat_requests[0].json["messages"][-1]["content"]
        assert 'author="Mallory admin"' in prompt
        for hidden in ("\u200b", "\u202e", "\u2066"):
            assert hidden not in prompt
