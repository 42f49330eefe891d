"""Twitch end to end: the real twitchio client against the fake Twitch, the real engine, the fake LLM."""

from __future__ import annotations

import asyncio

from familiar_connect.platforms.twitch.config import KindSection, TwitchSection
from tests.fakes.twitch import ALICE, BOB, BOT, RAIDER
from tests.platforms.twitch.conftest import VOICE_KEY, HarnessFactory

NO_GAP = "[policy]\nunprompted_gap_s = 0\n"


def last_prompt(harness: object, index: int = -1) -> str:
    requests = harness.llm.chat_requests  # type: ignore[attr-defined]
    return requests[index].json["messages"][-1]["content"]


class TestChatReplies:
    async def test_mention_gets_a_reply_in_chat(self, start_familiar: HarnessFactory) -> None:
        """An @-mention of the bot is answered through Helix, as the bot, replying to the message."""
        harness = await start_familiar()
        harness.llm.reply_text("Hello Alice, welcome to the stream!")
        await harness.twitch.chat("hi there", mention_bot=True)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        sent = harness.twitch.chat_sent[0]
        assert sent.text == "Hello Alice, welcome to the stream!"
        assert sent.sender_id == BOT.user_id
        assert sent.reply_parent_message_id is not None
        assert "@Familiar hi there" in last_prompt(harness)
        await harness.settle()
        assert await harness.history() == [
            ("event", "@Familiar hi there"),
            ("assistant", "Hello Alice, welcome to the stream!"),
        ]

    async def test_name_without_mention_is_addressed(self, start_familiar: HarnessFactory) -> None:
        """Saying the familiar's name as a word is enough to be answered."""
        harness = await start_familiar()
        harness.llm.reply_text("Yes?")
        await harness.twitch.chat("hey familiar, what's up", user=BOB)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        assert harness.sent() == ["Yes?"]

    async def test_ambient_chat_is_remembered_not_answered(
        self, start_familiar: HarnessFactory
    ) -> None:
        """Chat that does not address the familiar reaches history, not the model."""
        harness = await start_familiar()
        await harness.twitch.chat("just chatting with bob")
        await harness.twitch.chat("lol same", user=BOB)
        await harness.twitch.wait_for(
            lambda: harness.service.chat and harness.service.chat.stats.remembered == 2
        )
        await harness.settle()
        assert harness.llm.chat_requests == []
        assert harness.sent() == []
        assert await harness.history() == [
            ("event", "just chatting with bob"),
            ("event", "lol same"),
        ]

    async def test_ambient_chat_is_context_for_the_next_turn(
        self, start_familiar: HarnessFactory
    ) -> None:
        """What chat said before the familiar was addressed is in the prompt of its answer."""
        harness = await start_familiar()
        await harness.twitch.chat("the boss has two phases", user=BOB)
        await harness.twitch.wait_for(lambda: harness.service.chat.stats.remembered == 1)
        await harness.settle()
        harness.llm.reply_text("Two phases, yes.")
        await harness.twitch.chat("how many phases?", mention_bot=True)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        messages = harness.llm.chat_requests[0].json["messages"]
        assert any("the boss has two phases" in m["content"] for m in messages)

    async def test_own_echo_and_commands_are_ignored(self, start_familiar: HarnessFactory) -> None:
        """The bot's own messages (echoed by Twitch) and other bots' commands never reach the engine."""
        harness = await start_familiar()
        harness.llm.reply_text("Hi!")
        await harness.twitch.chat("!uptime familiar")
        await harness.twitch.chat("hello", mention_bot=True)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        await harness.twitch.wait_for(lambda: harness.service.chat.stats.own == 1)
        await harness.settle()
        stats = harness.service.chat.stats
        assert stats.commands == 1
        assert len(harness.llm.chat_requests) == 1
        assert harness.sent() == ["Hi!"]

    async def test_long_reply_is_split_at_500_and_capped(
        self, start_familiar: HarnessFactory
    ) -> None:
        """A long reply goes out as at most three messages of at most 500 characters, in order."""
        harness = await start_familiar()
        words = " ".join(f"word{i}" for i in range(400))
        harness.llm.reply_text(words)
        await harness.twitch.chat("tell me everything", mention_bot=True)
        await harness.twitch.wait_for(lambda: len(harness.twitch.chat_sent) >= 3, timeout_s=10)
        await harness.settle()
        sent = harness.sent()
        assert len(sent) == 3
        assert all(len(text) <= 500 for text in sent)
        assert sent[0].startswith("word0 word1")
        assert "[truncated" in sent[-1]
        assert harness.service.sink_stats.truncated == 1

    async def test_join_in_offers_ambient_chat_to_the_model(
        self, start_familiar: HarnessFactory
    ) -> None:
        """With join_in on, unaddressed chat gets an unprompted turn, and <silent> posts nothing."""
        harness = await start_familiar(NO_GAP, config=TwitchSection(join_in=True))
        harness.llm.reply_text("<silent>")
        await harness.twitch.chat("anyone seen the new patch?", user=BOB)
        await harness.llm.wait_for_requests(1, timeout_s=10)
        await harness.settle()
        assert "anyone seen the new patch?" in last_prompt(harness)
        assert harness.sent() == []


class TestChannelEvents:
    async def test_raid_is_answered_in_chat_and_out_loud(
        self, start_familiar: HarnessFactory
    ) -> None:
        """A raid is answered in chat and spoken in the voice channel, from one generation."""
        harness = await start_familiar(
            config=TwitchSection(raid=KindSection(priority=80, answer="both")), voice=True
        )
        harness.llm.reply_text("Welcome, raiders! Thanks Raider.")
        await harness.twitch.raid(42)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        await harness.settle()
        assert harness.sent() == ["Welcome, raiders! Thanks Raider."]
        assert harness.voice is not None
        assert harness.voice.posted == ["Welcome, raiders! Thanks Raider."]
        assert harness.voice.sent  # clauses were streamed to speech
        prompt = last_prompt(harness)
        assert "Raider raided the channel with 42 viewers." in prompt
        assert 'source="twitch raid event"' in prompt

    async def test_raid_without_voice_falls_back_to_chat(
        self, start_familiar: HarnessFactory
    ) -> None:
        """When the familiar is in no voice channel, an answer meant for voice goes to chat."""
        harness = await start_familiar(
            config=TwitchSection(raid=KindSection(priority=80, answer="voice"))
        )
        harness.llm.reply_text("Welcome!")
        await harness.twitch.raid(7, raider=RAIDER)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        assert harness.sent() == ["Welcome!"]
        assert harness.service.feeder is not None
        assert harness.service.feeder.voice_unavailable >= 1

    async def test_voice_only_answer_is_spoken_in_the_voice_conversation(
        self, start_familiar: HarnessFactory
    ) -> None:
        """An answer meant for voice is generated in the voice conversation and spoken, not posted."""
        harness = await start_familiar(
            config=TwitchSection(gift=KindSection(priority=60, answer="voice")), voice=True
        )
        harness.llm.reply_text("What a generous gift!")
        await harness.twitch.gift(ALICE, total=10)
        assert harness.voice is not None
        await harness.twitch.wait_for(lambda: harness.voice.posted, timeout_s=10)
        await harness.familiar.orchestrator.wait_idle(VOICE_KEY)
        await harness.familiar.history_writer.flush()
        assert harness.voice.posted == ["What a generous gift!"]
        assert harness.sent() == []
        turns = await harness.familiar.history.recent("discord", VOICE_KEY.as_str(), limit=10)
        assert [(t.role, t.content) for t in turns] == [
            ("event", "Alice gifted 10 subscriptions at Tier 1 to the community."),
            ("assistant", "What a generous gift!"),
        ]

    async def test_every_event_kind_reaches_the_model(self, start_familiar: HarnessFactory) -> None:
        """Follows, subs, resubs, gifts, cheers, redemptions and ad breaks become neutral inputs."""
        config = TwitchSection(
            redemptions=["Hydrate"], ad_break=KindSection(enabled=True, priority=5)
        )
        harness = await start_familiar(NO_GAP, config=config)
        await harness.twitch.follow(BOB)
        await harness.twitch.sub(BOB, tier="2000")
        await harness.twitch.resub(ALICE, months=15, streak=3, text="still here!")
        await harness.twitch.gift(ALICE, total=5)
        await harness.twitch.cheer(500, user=BOB, text="Cheer500 go go")
        await harness.twitch.redeem("Hydrate", "drink water please")
        await harness.twitch.ad_break(90)
        await harness.twitch.wait_for(
            lambda: sum(harness.service.events.counts.values()) >= 7, timeout_s=10
        )
        await harness.settle()
        prompts = "\n".join(
            m["content"] for r in harness.llm.chat_requests for m in r.json["messages"]
        )
        for expected in (
            "Bob followed the channel.",
            "Bob subscribed at Tier 2.",
            'Alice resubscribed at Tier 1: 15 months in total, a 3-month streak. Their message: "still here!"',
            "Alice gifted 5 subscriptions at Tier 1 to the community.",
            'Bob cheered 500 bits. Their message: "Cheer500 go go"',
            'Alice redeemed the channel-point reward "Hydrate". Their input: "drink water please"',
            "An ad break of 90 seconds began (started by the channel).",
        ):
            assert expected in prompts

    async def test_redemption_allow_list(self, start_familiar: HarnessFactory) -> None:
        """A redemption on the allow list is answered; one not on it is only remembered."""
        harness = await start_familiar(NO_GAP, config=TwitchSection(redemptions=["Ask Familiar"]))
        await harness.twitch.redeem("Highlight my message", "look at me")
        await harness.twitch.wait_for(
            lambda: harness.service.events.counts["redemption:reward_not_allowed"] == 1
        )
        await harness.settle()
        assert harness.llm.chat_requests == []
        harness.llm.reply_text("Great question!")
        await harness.twitch.redeem("ask familiar", "what's your favourite colour?")
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        await harness.settle()
        assert harness.sent() == ["Great question!"]
        assert len(harness.llm.chat_requests) == 1
        history = await harness.history()
        assert any("Highlight my message" in content for _, content in history)

    async def test_small_cheer_and_gift_recipients(self, start_familiar: HarnessFactory) -> None:
        """A cheer under min_bits is remembered, and a gift's recipients are not answered one by one."""
        harness = await start_familiar(NO_GAP, config=TwitchSection(min_bits=100))
        await harness.twitch.cheer(10, user=BOB)
        await harness.twitch.sub(ALICE, is_gift=True)
        await harness.twitch.wait_for(
            lambda: (
                harness.service.events.counts["sub:gift_recipient"] == 1
                and harness.service.events.counts["cheer:below_min_bits"] == 1
            )
        )
        await harness.settle()
        assert harness.llm.chat_requests == []
        assert ("event", "Bob cheered 10 bits.") in await harness.history()

    async def test_priority_raid_before_chat(self, start_familiar: HarnessFactory) -> None:
        """With one input per turn, a raid waiting beside chit-chat is answered first."""
        harness = await start_familiar(NO_GAP, config=TwitchSection(max_inputs_per_turn=1))
        harness.llm.reply_text("first reply", ttft_s=0.3)
        await harness.twitch.chat("warm up", mention_bot=True)
        await harness.llm.wait_for_requests(1, timeout_s=10)
        # While that reply is generated, chat and a raid arrive; the raid goes first.
        await harness.twitch.chat("second question", mention_bot=True, user=BOB)
        await harness.twitch.raid(99)
        await harness.llm.wait_for_requests(3, timeout_s=10)
        await harness.settle()
        assert "raided the channel with 99 viewers" in last_prompt(harness, 1)
        assert "second question" in last_prompt(harness, 2)

    async def test_events_in_a_row_are_each_answered(self, start_familiar: HarnessFactory) -> None:
        """A raid right after a follow is answered too, whatever the unprompted gap."""
        harness = await start_familiar()
        harness.llm.reply_text("Thanks for the follow!")
        await harness.twitch.follow(BOB)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        await harness.settle()
        harness.llm.reply_text("Welcome, raiders!")
        await harness.twitch.raid(12)
        await harness.twitch.wait_for(lambda: len(harness.twitch.chat_sent) == 2, timeout_s=3)

    async def test_follow_cooldown_per_viewer(self, start_familiar: HarnessFactory) -> None:
        """The same viewer following again within the cooldown is remembered, not answered twice."""
        harness = await start_familiar(NO_GAP)
        harness.llm.reply_text("Thanks for the follow!")
        await harness.twitch.follow(BOB)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        await harness.settle()
        await harness.twitch.follow(BOB)
        await harness.twitch.wait_for(lambda: harness.service.events.counts["follow:cooldown"] == 1)
        await harness.settle()
        assert len(harness.llm.chat_requests) == 1


class TestReconnects:
    async def test_session_reconnect_migrates_without_loss(
        self, start_familiar: HarnessFactory
    ) -> None:
        """After session_reconnect, events on the new connection still arrive, and it is counted."""
        harness = await start_familiar()
        await harness.twitch.reconnect()
        await harness.twitch.wait_for(lambda: harness.service.status.reconnects >= 2, timeout_s=10)
        harness.llm.reply_text("Still here.")
        await harness.twitch.chat("are you there?", mention_bot=True)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        assert harness.sent() == ["Still here."]
        assert harness.service.client is not None
        live = harness.service.client.live_sockets()
        assert len(live) == 2  # one per token (bot, broadcaster), the old ones closed
        await harness.stop()
        await asyncio.sleep(0.05)
        leftovers = [
            task
            for task in asyncio.all_tasks()
            if "Websocket" in getattr(task.get_coro(), "__qualname__", "")
            or task.get_name().startswith(("EventsubWebsocketListener", "twitch:"))
        ]
        assert leftovers == []

    async def test_dropped_connection_reconnects_and_resubscribes(
        self, start_familiar: HarnessFactory
    ) -> None:
        """A connection Twitch closes (4000) is replaced by twitchio, with every subscription renewed."""
        harness = await start_familiar()
        before = {sub.session_id for sub in harness.twitch.enabled()}
        await harness.twitch.close_sessions(4000)
        await harness.twitch.wait_for(
            lambda: (
                len(harness.twitch.enabled()) == len(harness.service.status.subscribed)
                and not {sub.session_id for sub in harness.twitch.enabled()} & before
            ),
            timeout_s=15,
        )
        harness.llm.reply_text("Back again.")
        await harness.twitch.chat("hello?", mention_bot=True)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        assert harness.service.status.reconnects >= 2

    async def test_connection_lost_for_good_restarts_the_service(
        self, start_familiar: HarnessFactory
    ) -> None:
        """When twitchio gives up (close 4001), the supervisor restarts the adapter, which resubscribes."""
        harness = await start_familiar()
        await harness.twitch.close_sessions(4001, "sent inbound traffic")
        await harness.twitch.wait_for(
            lambda: harness.supervisor.statuses["twitch"].restarts >= 1, timeout_s=15
        )
        await asyncio.wait_for(harness.service.ready.wait(), timeout=15)
        harness.llm.reply_text("Reconnected.")
        await harness.twitch.chat("ping", mention_bot=True)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        assert harness.sent() == ["Reconnected."]

    async def test_revocation_turns_the_feature_off(self, start_familiar: HarnessFactory) -> None:
        """A revoked subscription shows in the status and its later events are ignored."""
        harness = await start_familiar(NO_GAP)
        await harness.twitch.revoke("channel.cheer")
        await harness.twitch.wait_for(lambda: harness.service.status.revocations == 1)
        status = harness.service.status
        assert status.disabled["cheer"] == "revoked:authorization_revoked"
        assert "cheer" not in status.subscribed
        assert harness.twitch.enabled("channel.cheer") == []
        harness.llm.reply_text("Thanks for the follow.")
        await harness.twitch.follow(BOB)
        await harness.twitch.wait_for(lambda: harness.twitch.chat_sent, timeout_s=10)
        assert harness.service.status.state == "ready"
