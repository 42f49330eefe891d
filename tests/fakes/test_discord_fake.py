"""The fake Discord, driven by the real discord.py 2.7.1 client over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.fakes.discord_fake import (
    ALICE_ID,
    APPLICATION_ID,
    BOB_ID,
    BOT_USER_ID,
    GENERAL_ID,
    GUILD_ID,
    RANDOM_ID,
    THREAD_ID,
    VOICE_ID,
    FakeAttachment,
    FakeDiscord,
    World,
    pointed_at,
)
from tests.fakes.discord_world import (
    ADMIN_ROLE_ID,
    INTENT_GUILD_MEMBERS,
    INTENT_MESSAGE_CONTENT,
    MANAGE_GUILD,
)

TOKEN = "fake-token-for-tests"
GUARD_S = 5.0


def make_intents(*, message_content: bool = True) -> discord.Intents:
    """Default intents plus members (and message content unless told otherwise)."""
    intents = discord.Intents.default()
    intents.members = True
    intents.message_content = message_content
    return intents


class RecordingClient(discord.Client):
    """A real client that keeps what it receives for the test to look at."""

    def __init__(self, *, intents: discord.Intents | None = None) -> None:
        super().__init__(intents=intents or make_intents(), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.received: list[discord.Message] = []
        self.resumed_count = 0

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Skip discord.py's 5 s pause before a re-IDENTIFY; the fake has no identify limit."""

    async def on_message(self, message: discord.Message) -> None:
        if len(self.received) < 1_000:
            self.received.append(message)

    async def on_resumed(self) -> None:
        self.resumed_count += 1

    def from_users(self) -> list[discord.Message]:
        """Received messages not written by the bot itself."""
        return [m for m in self.received if self.user is None or m.author.id != self.user.id]


@contextlib.asynccontextmanager
async def connected(
    fake: FakeDiscord, *, intents: discord.Intents | None = None
) -> AsyncIterator[RecordingClient]:
    """Log a client in, connect it and wait for on_ready; close it on exit."""
    client = RecordingClient(intents=intents)
    await client.login(fake.bot_token)
    task = asyncio.create_task(client.connect(reconnect=True))
    try:
        async with asyncio.timeout(GUARD_S):
            await client.wait_until_ready()
        yield client
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(GUARD_S):
                await task


@pytest.fixture(name="fake")
async def fixture_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(bot_token=TOKEN) as fake:
        with pointed_at(fake):
            yield fake


@pytest.fixture(name="client")
async def fixture_client(fake: FakeDiscord) -> AsyncIterator[RecordingClient]:
    async with connected(fake) as client:
        yield client


def text_channel(client: discord.Client, channel_id: int = GENERAL_ID) -> discord.TextChannel:
    channel = client.get_channel(channel_id)
    assert isinstance(channel, discord.TextChannel)
    return channel


async def sync_to_guild(client: RecordingClient) -> list[app_commands.AppCommand]:
    """Copy the global commands to the test guild and sync them there (instant on Discord)."""
    guild = discord.Object(GUILD_ID)
    client.tree.copy_global_to(guild=guild)
    return await client.tree.sync(guild=guild)


class TestLogin:
    async def test_ready_caches_the_world(self, client: RecordingClient) -> None:
        """After on_ready the client knows the bot, the guild, its channels, roles and members."""
        assert client.user is not None and client.user.id == BOT_USER_ID
        assert client.application_id == APPLICATION_ID
        guild = client.get_guild(GUILD_ID)
        assert guild is not None and guild.name == "Test Guild"
        assert {c.id for c in guild.text_channels} == {GENERAL_ID, RANDOM_ID}
        assert [c.id for c in guild.voice_channels] == [VOICE_ID]
        assert guild.get_thread(THREAD_ID) is not None
        alice, bob = guild.get_member(ALICE_ID), guild.get_member(BOB_ID)
        assert alice is not None and alice.name == "alice"
        assert alice.guild_permissions.manage_guild
        assert bob is not None and not bob.guild_permissions.manage_guild
        assert guild.get_role(ADMIN_ROLE_ID) in alice.roles
        assert guild.me is not None and guild.me.id == BOT_USER_ID

    async def test_custom_world(self) -> None:
        """A world built with the builder helpers is what the client caches."""
        world = World(bot_name="Custom")
        world.add_guild(42, "Elsewhere")
        world.add_role(42, 43, "Mods", MANAGE_GUILD)
        world.add_text_channel(42, 44, "lobby")
        world.add_member(42, 45, "carol", role_ids=[43])
        async with FakeDiscord(bot_token=TOKEN, world=world) as fake:
            with pointed_at(fake):
                async with connected(fake) as client:
                    guild = client.get_guild(42)
                    assert client.user is not None and client.user.name == "Custom"
        assert guild is not None and [c.name for c in guild.text_channels] == ["lobby"]
        carol = guild.get_member(45)
        assert carol is not None and carol.guild_permissions.manage_guild

    async def test_identify_carries_token_and_intents(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """The fake records IDENTIFY with the client's token and intents."""
        (identify,) = fake.identifies
        assert identify["token"] == TOKEN
        assert identify["intents"] == make_intents().value
        assert fake.session_intents == make_intents().value
        assert fake.rest_calls[0].path == "/users/@me"
        assert fake.rest_calls[0].headers["Authorization"] == f"Bot {TOKEN}"

    async def test_rest_json_content_type_is_exact(self, fake: FakeDiscord) -> None:
        """REST answers carry ``Content-Type: application/json`` without a charset."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{fake.api_base}/users/@me", headers={"Authorization": f"Bot {TOKEN}"}
            ) as response,
        ):
            assert response.headers["Content-Type"] == "application/json"
            assert (await response.json())["id"] == str(BOT_USER_ID)

    async def test_bad_token_is_a_login_failure(self, fake: FakeDiscord) -> None:
        """A wrong token gets 401 from ``GET /users/@me`` and discord.py raises LoginFailure."""
        client = RecordingClient()
        try:
            with pytest.raises(discord.LoginFailure):
                await client.login("not-the-token")
        finally:
            await client.close()
        assert [(c.path, c.status) for c in fake.rest_calls] == [("/users/@me", 401)]

    async def test_bad_gateway_token_closes_4004(self, fake: FakeDiscord) -> None:
        """IDENTIFY with a token the gateway rejects is closed with 4004, which is fatal."""
        client = RecordingClient()
        await client.login(TOKEN)
        fake.gateway.bot_token = "rotated"
        with pytest.raises(discord.ConnectionClosed) as caught:
            async with asyncio.timeout(GUARD_S):
                await client.connect(reconnect=True)
        await client.close()
        assert caught.value.code == 4004

    async def test_privileged_intent_not_enabled(self) -> None:
        """Asking for a privileged intent the portal lacks closes 4014: PrivilegedIntentsRequired."""
        async with FakeDiscord(
            bot_token=TOKEN, enabled_privileged_intents=INTENT_GUILD_MEMBERS
        ) as fake:
            with pointed_at(fake):
                client = RecordingClient()
                await client.login(TOKEN)
                try:
                    with pytest.raises(discord.PrivilegedIntentsRequired):
                        async with asyncio.timeout(GUARD_S):
                            await client.connect(reconnect=True)
                finally:
                    await client.close()
        assert fake.identifies[0]["intents"] & INTENT_MESSAGE_CONTENT

    async def test_pointed_at_restores_the_globals(self) -> None:
        """``pointed_at`` sets Route.BASE and DEFAULT_GATEWAY and puts them back."""
        before = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        async with FakeDiscord() as fake:
            with pointed_at(fake):
                base = discord.http.Route.BASE
                gateway = str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
                assert (base, gateway) == (fake.api_base, fake.gateway_url)
        after = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        assert after == before


class TestIncomingMessages:
    async def test_message_reaches_on_message(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """MESSAGE_CREATE arrives with content, member author and the bot's mention resolved."""
        sent = await fake.user_says("hello familiar", author="alice", mentions_bot=True)
        (message,) = await fake.wait_for(client.from_users)
        assert message.id == int(sent["id"])
        assert message.content == f"<@{BOT_USER_ID}> hello familiar"
        assert isinstance(message.author, discord.Member) and message.author.id == ALICE_ID
        assert client.user in message.mentions
        assert message.channel.id == GENERAL_ID and message.guild is not None

    async def test_reply_and_attachment(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """A reply carries its reference; an attachment can be downloaded from the fake CDN."""
        first = await fake.user_says("first", author="bob")
        await fake.user_says(
            "second",
            author="alice",
            reply_to=int(first["id"]),
            attachments=[FakeAttachment("notes.txt", b"some notes", "text/plain")],
        )
        messages = await fake.wait_for(
            lambda: len(client.from_users()) >= 2 and client.from_users()
        )
        reply = messages[1]
        assert reply.reference is not None and reply.reference.message_id == int(first["id"])
        assert isinstance(reply.reference.resolved, discord.Message)
        assert reply.reference.resolved.content == "first"
        (attachment,) = reply.attachments
        assert attachment.filename == "notes.txt"
        assert await attachment.read() == b"some notes"

    async def test_thread_message(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """A message in a thread arrives with the thread as its channel."""
        await fake.user_says("in a thread", channel_id=THREAD_ID)
        (message,) = await fake.wait_for(client.from_users)
        assert isinstance(message.channel, discord.Thread)
        assert message.channel.parent_id == GENERAL_ID

    async def test_dm_message(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """A DM arrives on a DM channel without a guild."""
        sent = await fake.dm("psst", author="bob")
        (message,) = await fake.wait_for(client.from_users)
        assert isinstance(message.channel, discord.DMChannel)
        assert message.guild is None and message.author.id == BOB_ID
        assert message.channel.id == int(sent["channel_id"])

    async def test_content_redacted_without_message_content_intent(self, fake: FakeDiscord) -> None:
        """Without MESSAGE_CONTENT, guild messages lose their content unless they mention the bot."""
        async with connected(fake, intents=make_intents(message_content=False)) as client:
            await fake.user_says("secret", author="bob")
            await fake.user_says("hey you", author="bob", mentions_bot=True)
            messages = await fake.wait_for(
                lambda: len(client.from_users()) >= 2 and client.from_users()
            )
        assert [m.content for m in messages] == ["", f"<@{BOT_USER_ID}> hey you"]

    async def test_member_chunk_request(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """Op 8 REQUEST_GUILD_MEMBERS is answered with GUILD_MEMBERS_CHUNK."""
        guild = client.get_guild(GUILD_ID)
        assert guild is not None
        async with asyncio.timeout(GUARD_S):
            members = await guild.chunk()
        assert {m.id for m in members} == {ALICE_ID, BOB_ID, BOT_USER_ID}
        assert fake.frames(8)[0]["guild_id"] == GUILD_ID


class TestOutgoing:
    async def test_typing_hits_the_endpoint(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """``channel.typing()`` posts to the typing endpoint of that channel."""
        async with text_channel(client).typing():
            pass
        assert len(fake.typing_calls(GENERAL_ID)) == 1
        assert fake.typing_calls(RANDOM_ID) == []

    async def test_send_records_json_and_echoes(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """``channel.send`` is recorded with allowed_mentions and echoed back as the bot's message."""
        sent = await text_channel(client).send(
            f"hi <@{BOB_ID}>", allowed_mentions=discord.AllowedMentions.none()
        )
        (call,) = fake.messages_sent(GENERAL_ID)
        assert call.json["content"] == f"hi <@{BOB_ID}>"
        assert call.json["allowed_mentions"] == {"parse": []}
        assert sent.id == int(call.response["id"]) and sent.author.id == BOT_USER_ID
        assert call.response["mentions"] == []
        echo = await fake.wait_for(lambda: [m for m in client.received if m.id == sent.id])
        assert echo[0].author == client.user

    async def test_reply_sets_message_reference(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """Replying to a user's message sends ``message_reference`` and returns type 19."""
        await fake.user_says("question?")
        (incoming,) = await fake.wait_for(client.from_users)
        reply = await incoming.reply("answer")
        (call,) = fake.messages_sent(GENERAL_ID)
        assert call.json["message_reference"]["message_id"] == incoming.id
        assert reply.reference is not None and reply.type is discord.MessageType.reply

    async def test_file_send_records_the_attachment(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """A multipart send records the file's name and bytes and returns the attachment."""
        payload = b'{"export": true}'
        sent = await text_channel(client).send(
            "your data", file=discord.File(io.BytesIO(payload), filename="my-data.json")
        )
        (call,) = fake.messages_sent(GENERAL_ID)
        assert call.json["content"] == "your data"
        ((_, filename, _, data),) = [
            (f.field, f.filename, f.content_type, f.data) for f in call.files
        ]
        assert (filename, data) == ("my-data.json", payload)
        assert sent.attachments[0].filename == "my-data.json"
        assert await sent.attachments[0].read() == payload

    async def test_edit_is_recorded(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """Editing a sent message patches it and the edit is recorded."""
        sent = await text_channel(client).send("draft")
        edited = await sent.edit(content="final")
        (call,) = fake.message_edits(GENERAL_ID)
        assert call.json["content"] == "final" and edited.content == "final"
        assert edited.edited_at is not None

    async def test_overlong_message_is_rejected(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """More than 2000 characters gets Discord's 400 Invalid Form Body (50035)."""
        with pytest.raises(discord.HTTPException) as caught:
            await text_channel(client).send("x" * 2001)
        assert caught.value.status == 400 and caught.value.code == 50035
        assert fake.messages_sent() == []

    async def test_rate_limit_is_retried(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """A 429 on send makes discord.py sleep and retry; the second attempt is recorded."""
        fake.fail_next("POST", rf"/channels/{GENERAL_ID}/messages", retry_after_s=0.01)
        sent = await text_channel(client).send("after the limit")
        attempts = [c for c in fake.rest_calls if c.route == "create_message"]
        assert [c.status for c in attempts] == [429, 200]
        assert attempts[0].response["retry_after"] == 0.01
        (call,) = fake.messages_sent(GENERAL_ID)
        assert int(call.response["id"]) == sent.id

    async def test_injected_error_status(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """A scripted 403 surfaces as discord.Forbidden with the scripted body."""
        fake.fail_next(
            "POST",
            rf"/channels/{RANDOM_ID}/messages",
            status=403,
            body={"message": "Missing Permissions", "code": 50013},
        )
        with pytest.raises(discord.Forbidden) as caught:
            await text_channel(client, RANDOM_ID).send("nope")
        assert caught.value.code == 50013

    async def test_fetch_history_react_dm_and_delete(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """The lookups, history, reactions, DMs and deletes a bot uses all have routes."""
        guild = client.get_guild(GUILD_ID)
        assert guild is not None
        channel = await client.fetch_channel(GENERAL_ID)
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        assert (await guild.fetch_member(BOB_ID)).name == "bob"
        alice = await client.fetch_user(ALICE_ID)
        await fake.user_says("one")
        second = await fake.user_says("two", author="bob")
        history = [m.content async for m in channel.history(limit=10)]
        assert history == ["two", "one"]
        fetched = await channel.fetch_message(int(second["id"]))
        await fetched.add_reaction("\N{THUMBS UP SIGN}")
        dm_message = await alice.send("private hello")
        assert isinstance(dm_message.channel, discord.DMChannel)
        assert fake.messages_sent(dm_message.channel.id)[0].json["content"] == "private hello"
        await dm_message.delete()
        assert fake.world.message(dm_message.id) is None
        assert fake.unexpected_calls() == []

    async def test_unknown_route_is_404_and_recorded(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """A call to a route the fake lacks gets 404 and shows up in ``unexpected_calls``."""
        with pytest.raises(discord.NotFound):
            await client.http.request(discord.http.Route("GET", "/voice/regions"))
        assert [c.path for c in fake.unexpected_calls()] == ["/voice/regions"]

    async def test_voice_state_update(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """Op 4 is recorded and echoed as VOICE_STATE_UPDATE, so the bot shows in the channel."""
        guild = client.get_guild(GUILD_ID)
        assert guild is not None
        seen: list[dict[str, Any]] = []

        async def hook(data: dict[str, Any]) -> None:
            seen.append(data)

        fake.gateway.on_voice_state = hook
        await guild.change_voice_state(channel=guild.get_channel(VOICE_ID), self_deaf=True)
        await fake.wait_for(lambda: guild.me.voice is not None and seen)
        assert guild.me.voice is not None and guild.me.voice.channel is not None
        assert guild.me.voice.channel.id == VOICE_ID
        assert fake.voice_state_updates[0]["channel_id"] == VOICE_ID
        assert seen == fake.voice_state_updates


class TestInteractions:
    async def test_slash_command_ephemeral_reply_and_followup(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """A synced command is invoked; its ephemeral reply and follow-up reach the fake."""
        invoked: list[discord.Interaction] = []

        @client.tree.command(name="ping", description="Check the bot")
        async def ping(interaction: discord.Interaction) -> None:
            invoked.append(interaction)
            await interaction.response.send_message("pong", ephemeral=True)
            await interaction.followup.send("and more")

        synced = await sync_to_guild(client)
        (command,) = fake.synced_commands(GUILD_ID)
        assert command["name"] == "ping" and synced[0].id == int(command["id"])
        interaction = await fake.slash("ping", user="alice")
        answers = await fake.wait_for(
            lambda: (
                len(fake.interaction_callbacks(interaction)) >= 2
                and fake.interaction_callbacks(interaction)
            )
        )
        first, followup = answers
        assert (first.kind, first.type, first.content) == ("callback", 4, "pong")
        assert first.flags == 64 and first.ephemeral
        assert (followup.kind, followup.content) == ("followup", "and more")
        assert invoked[0].user.id == ALICE_ID and invoked[0].permissions.manage_guild

    async def test_subcommand_options_and_permissions(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """Subcommand options arrive typed, with a resolved member and the caller's permissions."""
        calls: list[tuple[discord.Member, int, bool]] = []
        memory = app_commands.Group(name="memory", description="Memory tools")

        @memory.command(name="forget", description="Forget someone")
        async def forget(interaction: discord.Interaction, user: discord.Member, days: int) -> None:
            calls.append((user, days, interaction.permissions.manage_guild))
            await interaction.response.send_message("forgotten", ephemeral=True)

        client.tree.add_command(memory)
        await sync_to_guild(client)
        interaction = await fake.slash(
            "memory", {"user": "alice", "days": 3}, user="bob", subcommand="forget"
        )
        await fake.wait_for(lambda: fake.interaction_callbacks(interaction))
        ((member, days, manage_guild),) = calls
        assert isinstance(member, discord.Member) and member.id == ALICE_ID
        assert days == 3 and manage_guild is False
        assert interaction["data"]["options"][0]["type"] == 1

    async def test_button_click_reaches_the_view(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """Clicking a button on the bot's reply runs the discord.ui.View callback."""
        clicked: list[int] = []

        class Confirm(discord.ui.View):
            @discord.ui.button(label="Confirm", custom_id="confirm")
            async def confirm(
                self, interaction: discord.Interaction, button: discord.ui.Button[Any]
            ) -> None:
                clicked.append(interaction.user.id)
                await interaction.response.edit_message(content="confirmed", view=None)

        @client.tree.command(name="forget-me", description="Delete my data")
        async def forget_me(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("Sure?", view=Confirm(), ephemeral=True)

        await sync_to_guild(client)
        command = await fake.slash("forget-me", user="bob")
        (answer,) = await fake.wait_for(lambda: fake.interaction_callbacks(command))
        assert answer.components[0]["components"][0]["custom_id"] == "confirm"
        assert answer.message is not None
        click = await fake.click("confirm", message=answer.message, user="bob")
        (update,) = await fake.wait_for(lambda: fake.interaction_callbacks(click))
        assert clicked == [BOB_ID]
        assert (update.type, update.content) == (7, "confirmed")
        assert fake.world.message(int(answer.message["id"]))["content"] == "confirmed"

    async def test_defer_then_edit_original_with_file(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """A deferred response is completed by editing the original, here with a file."""

        @client.tree.command(name="context", description="Show the context")
        async def context(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await interaction.edit_original_response(
                content="here", attachments=[discord.File(io.BytesIO(b"ctx"), "context.md")]
            )

        await sync_to_guild(client)
        interaction = await fake.slash("context")
        answers = await fake.wait_for(
            lambda: (
                len(fake.interaction_callbacks(interaction)) >= 2
                and fake.interaction_callbacks(interaction)
            )
        )
        assert [(a.kind, a.type) for a in answers] == [("callback", 5), ("edit_original", None)]
        assert answers[0].ephemeral
        assert answers[1].content == "here"
        assert [(f.filename, f.data) for f in answers[1].files] == [("context.md", b"ctx")]

    async def test_slash_in_dm(self, fake: FakeDiscord, client: RecordingClient) -> None:
        """A global command run in a DM carries ``user`` instead of ``member``."""
        users: list[discord.abc.User] = []

        @client.tree.command(name="hello", description="Say hello")
        async def hello(interaction: discord.Interaction) -> None:
            users.append(interaction.user)
            await interaction.response.send_message("hi")

        await client.tree.sync()
        dm = fake.world.add_dm("bob")
        interaction = await fake.slash("hello", user="bob", channel_id=dm.id)
        await fake.wait_for(lambda: fake.interaction_callbacks(interaction))
        assert "member" not in interaction and users[0].id == BOB_ID
        assert not isinstance(users[0], discord.Member)

    async def test_followup_before_ack_and_double_ack_are_rejected(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """Like Discord: a follow-up before the callback is 10015, a second callback is 40060."""

        @client.tree.command(name="raw", description="Answered by the test itself")
        async def raw(interaction: discord.Interaction) -> None:
            """Leave the interaction unanswered so the test can answer it by hand."""

        await sync_to_guild(client)
        interaction = await fake.slash("raw")
        token, iid = interaction["token"], interaction["id"]
        callback = f"{fake.api_base}/interactions/{iid}/{token}/callback?with_response=1"
        body = {"type": 4, "data": {"content": "ok"}}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{fake.api_base}/webhooks/{APPLICATION_ID}/{token}", json=body["data"]
            ) as early:
                assert (early.status, (await early.json())["code"]) == (404, 10015)
            async with session.post(callback, json=body) as first:
                assert first.status == 200
                assert (await first.json())["resource"]["message"]["content"] == "ok"
            async with session.post(callback, json=body) as second:
                assert (second.status, (await second.json())["code"]) == (400, 40060)
        assert [c.kind for c in fake.interaction_callbacks(interaction)] == ["callback"]

    async def test_unsynced_command_cannot_be_sent(self, fake: FakeDiscord) -> None:
        """``slash`` refuses a command that was never synced, as Discord would never send it."""
        with pytest.raises(LookupError):
            await fake.slash("never-synced")


class TestGatewaySession:
    async def test_reconnect_resumes_and_messages_flow(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """Op 7 makes the client RESUME on resume_gateway_url; events after it still arrive."""
        session_id = fake.session_id
        await fake.reconnect()
        await fake.wait_for(lambda: fake.resume_count == 1)
        (resume,) = fake.resumes
        assert resume["token"] == TOKEN and resume["session_id"] == session_id
        assert fake.connection_count == 2 and len(fake.identifies) == 1
        assert fake.gateway_received[-1].connection == 2
        await fake.user_says("after resume")
        (message,) = await fake.wait_for(client.from_users)
        assert message.content == "after resume"
        await fake.wait_for(lambda: client.resumed_count == 1)

    async def test_events_missed_while_away_are_replayed(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """A message sent while the client is reconnecting is delivered exactly once."""
        await fake.reconnect()
        await fake.user_says("during the reconnect")
        await fake.wait_for(lambda: fake.resume_count == 1)
        (message,) = await fake.wait_for(client.from_users)
        assert message.content == "during the reconnect"
        await fake.user_says("after")
        await fake.wait_for(lambda: len(client.from_users()) == 2)
        assert [m.content for m in client.from_users()] == ["during the reconnect", "after"]

    async def test_close_code_4000_resumes(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """An abnormal close (4000) is followed by a RESUME, not a new IDENTIFY."""
        await fake.close(4000)
        await fake.wait_for(lambda: fake.resume_count == 1)
        assert len(fake.identifies) == 1

    async def test_invalid_session_reidentifies(
        self, fake: FakeDiscord, client: RecordingClient
    ) -> None:
        """A non-resumable INVALID_SESSION makes the client IDENTIFY again on a new session."""
        await fake.invalid_session(resumable=False)
        await fake.wait_for(lambda: fake.identify_count == 2)
        await fake.user_says("fresh session")
        (message,) = await fake.wait_for(client.from_users)
        assert message.content == "fresh session"
        assert fake.resume_count == 0

    async def test_heartbeats_are_acknowledged(self) -> None:
        """With a short interval the client keeps heartbeating and sees ACKs (finite latency)."""
        async with FakeDiscord(bot_token=TOKEN, heartbeat_interval_ms=20) as fake:
            with pointed_at(fake):
                async with connected(fake) as client:
                    await fake.wait_for(lambda: len(fake.heartbeats) >= 3)
                    latency = client.latency
        assert latency != float("inf")

    async def test_stop_closes_the_resumed_socket_cleanly(self, fake: FakeDiscord) -> None:
        """Stopping the fake sends a close frame (1001) on the live, resumed gateway socket."""
        async with connected(fake) as client:
            await fake.reconnect()
            await fake.wait_for(lambda: fake.resume_count == 1)
            socket = client.ws.socket
            async with asyncio.timeout(GUARD_S):
                await fake.stop()
            await fake.wait_for(lambda: socket.closed)
            assert socket.close_code == 1001

    async def test_verbs_need_a_session(self, fake: FakeDiscord) -> None:
        """Sending an event before any client identified is an error, not a silent drop."""
        with pytest.raises(RuntimeError):
            await fake.user_says("nobody listens")

    async def test_wait_for_times_out(self, fake: FakeDiscord) -> None:
        """``wait_for`` raises TimeoutError when the predicate never holds."""
        with pytest.raises(TimeoutError):
            await fake.wait_for(lambda: False, timeout_s=0.05)
