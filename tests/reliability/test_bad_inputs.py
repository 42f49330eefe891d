"""The shared hostile-input corpus through every entry point that exists today.

The corpus in ``tests/bad_inputs.py`` (loaded with :func:`tests.bad_inputs.load_corpus`)
is driven through:

* **Discord messages and display names** — each item is posted, in its own
  channel, by a member whose nickname is the item too; then the same channel asks
  for the item as the model's *reply* (what people see), then has the model use
  it as *tool arguments* (a note's content and a path to read), then asks about
  the note so it comes back as memory;
* **Twitch chat and channel-point redemptions** — each item @-mentions the
  familiar in chat from a viewer whose display name is the item, then is the
  input of a redemption of an answered reward (real twitchio, fake Twitch): every
  turn answered in chat, a notice for each long message, the viewer's words in an
  event cut visibly at 300 characters;
* **voice transcripts** — each item is what the fake Deepgram heard a member say
  (the final transcript), through the real voice pipeline: answered out loud;
* **the terminal** — ``familiar chat`` with every item on stdin;
* **character files** — each item as display name, alias and persona;
* **settings** — each item as the value of several variables;
* **slash-command options** — none exist yet; a guard test fails when one is
  added, so it gets driven here too.

Defined outcomes: a text entry point answers (``expect: answered``) or answers
with a truncation notice (``truncated``); the model output is posted without
pings or leaked markup; files and settings are accepted or refused with a
one-paragraph error that never echoes the value. Nothing crashes the process,
and every occurrence of an item's marker in what the model received sits inside
a ``<data ...>`` fence (the fake model's request log is checked), with no hidden
characters anywhere in the prompt.

Extension point: a new entry point gets a ``Test*`` class here (same corpus, same
fence check).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from familiar_connect.character import load_character
from familiar_connect.core.prompt import PromptBudget, PromptInputs, assemble
from familiar_connect.errors import CharacterConfigError, ConfigError
from familiar_connect.settings import load_settings
from tests.bad_inputs import BadInput, load_corpus
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import GUILD_ID, World
from tests.fakes.twitch import TwitchUser
from tests.familiar_process import run_familiar
from tests.reliability.fences import (
    FENCE,
    ScriptedOpenRouter,
    fence_report,
    hidden_characters,
)
from tests.reliability.figures import record, timeout_s
from tests.reliability.rig import DISCORD_TOKEN, LLM_KEY, Rig, rig
from tests.reliability.rig_twitch import RigTwitch, twitch_rig
from tests.reliability.rig_voice import VOICE_KEY, voice_rig

CORPUS = load_corpus(run="discord")
OUTPUTS = {item.id: item for item in load_corpus(run="output")}
TOOLS = {item.id: item for item in load_corpus(run="tools")}
KNOWN_BUGS = [item for item in load_corpus(run="discord", known_bugs=True) if item.known_bug]
TRUNCATION_NOTICE = "Your message was long"
LEAKED_MARKUP = re.compile(r"<tool_call>|<function=|<think>|<\|[^|>]{1,60}\|>|<silent>", re.I)
FIRST_CHANNEL = 6000
SILENT_OUTPUTS = frozenset({"fake-tool-call"})


def world_for(items: list[BadInput]) -> World:
    """The default guild plus one channel and one member (nicknamed with the item) per item."""
    world = World.default()
    for index, item in enumerate(items):
        world.add_text_channel(GUILD_ID, FIRST_CHANNEL + index, f"bad-{index}")
        world.add_member(GUILD_ID, 5000 + index, f"user{index}", nick=item.text[:100])
    return world


async def drive_channel(r: Rig, index: int, item: BadInput) -> dict[str, Any]:
    """Input, output, tool arguments and memory for one item in its own channel."""
    channel = FIRST_CHANNEL + index
    author = 5000 + index
    outcome: dict[str, Any] = {"id": item.id}

    async def turn(text: str, *, marker: str | None = None) -> list[str]:
        """Send ``text``; wait for a post, or (with ``marker``) for the turn to finish."""
        before = len(r.posted(channel))
        await r.discord.user_says(text, author=author, channel_id=channel, mentions_bot=True)
        if marker is None:
            await r.discord.wait_for(
                lambda: len(r.posted(channel)) > before, timeout_s=timeout_s(30)
            )
        else:
            await r.discord.wait_for(
                lambda: any(marker in req.body.decode() for req in r.llm.chat_requests),
                timeout_s=timeout_s(30),
            )
        await r.idle(channel)
        return r.posted(channel)[before:]

    # 1. The item as a user's message (from a member whose nickname is the item).
    posted = await turn(item.text)
    outcome["input"] = "truncated" if any(TRUNCATION_NOTICE in p for p in posted) else "answered"
    assert posted[-1] == "noted.", (item.id, posted)

    # 2. The item as the model's reply: what people would see.
    output = OUTPUTS[item.id]
    r.llm.replies[f"[[reply:{item.id}]]"] = output.text
    posted = await turn(f"say something [[reply:{item.id}]]", marker=f"[[reply:{item.id}]]")
    # Posted (split, without pings or markup), or silent when nothing visible is left.
    outcome["output"] = "posted" if posted else "silent"
    for part in posted:
        assert len(part) <= 2000, item.id
        assert not LEAKED_MARKUP.search(part), (item.id, part[:200])
    mentions = [c.json["allowed_mentions"] for c in r.discord.messages_sent(channel)]
    assert all(m["parse"] == [] and not m.get("roles") for m in mentions), item.id

    # 3. The item as tool arguments: a note's content, and a path to read.
    tool = TOOLS[item.id]
    r.llm.tools[f"[[tools:{item.id}]]"] = [
        ("memory_write", {"path": f"topics/bad-{index}.md", "content": tool.text}),
        ("memory_read", {"path": tool.text[:400] or "x"}),
    ]
    posted = await turn(f"use your tools [[tools:{item.id}]]")
    assert posted[-1] == "done.", (item.id, posted)
    note = r.familiar.settings.familiar_dir / "memory" / "topics" / f"bad-{index}.md"
    outcome["note"] = "written" if note.exists() else "refused"

    # 4. Ask about the note, so it comes back through memory search.
    if tool.nonce:
        await turn(f"what do you remember about {tool.nonce}?")
    return outcome


def check_fences(r: Rig, items: list[BadInput]) -> dict[str, int]:
    requests = r.llm.chat_requests
    fenced_total = 0
    for item in items:
        for nonce, must_arrive in (
            (item.nonce, True),
            (OUTPUTS[item.id].nonce, False),  # the familiar's own words: unfenced by design
            (TOOLS[item.id].nonce, True),
        ):
            if not nonce:
                continue
            fenced, escapes = fence_report(requests, nonce)
            assert escapes == [], (item.id, escapes[:3])
            if must_arrive:
                assert fenced >= 1, f"{item.id}: marker never reached the model"
            fenced_total += fenced
    return {"requests_checked": len(requests), "fenced_occurrences": fenced_total}


class TestDiscordEntryPoints:
    async def test_corpus_through_messages_names_replies_and_tools(self, tmp_path: Path) -> None:
        """Every item, as message, nickname, reply and tool argument, has its defined outcome, fenced."""
        items = CORPUS
        async with (
            FakeDiscord(bot_token=DISCORD_TOKEN, world=world_for(items)) as discord,
            ScriptedOpenRouter(expected_api_key=LLM_KEY) as llm,
            rig(tmp_path, discord=discord, llm=llm) as r,
        ):
            outcomes = await asyncio.gather(
                *(drive_channel(r, index, item) for index, item in enumerate(items))
            )
            stats = r.orchestrator.stats
            assert stats.failed == 0 and stats.history_refused == 0, stats
            assert r.supervisor.statuses["history_writer"].restarts == 0
            figures = check_fences(r, items)
            assert hidden_characters(r.llm.chat_requests) == []
            assert r.log.errors() == [], r.log.errors()[:3]
        for item, outcome in zip(items, outcomes, strict=True):
            assert outcome["input"] == item.expect, outcome
            # A reply that is nothing but tool-call markup is dropped whole: the familiar stays quiet.
            expected_output = "silent" if item.id in SILENT_OUTPUTS else "posted"
            assert outcome["output"] == expected_output, outcome
        record(
            "bad-input",
            "discord (message, nickname, reply, tool args, memory)",
            items=len(items),
            entry_points=5,
            crashes=0,
            escapes=0,
            outputs_silent=sum(o["output"] == "silent" for o in outcomes),
            notes_written=sum(o["note"] == "written" for o in outcomes),
            **figures,
        )

    @pytest.mark.parametrize(
        "item",
        [
            pytest.param(i, id=i.id, marks=pytest.mark.xfail(strict=True, reason=i.known_bug))
            for i in KNOWN_BUGS
        ],
    )
    async def test_known_bug_items(self, tmp_path: Path, item: BadInput) -> None:
        """Items that reveal an open bug: answered, stored, fenced, with no hidden characters."""
        async with (
            FakeDiscord(bot_token=DISCORD_TOKEN, world=world_for([item])) as discord,
            ScriptedOpenRouter(expected_api_key=LLM_KEY) as llm,
            rig(tmp_path, discord=discord, llm=llm) as r,
        ):
            await r.discord.user_says(
                item.text, author=5000, channel_id=FIRST_CHANNEL, mentions_bot=True
            )
            await r.discord.wait_for(lambda: r.orchestrator.stats.turns >= 1)
            await r.idle(FIRST_CHANNEL)
            await asyncio.sleep(0.1)  # a reply or notice, if any, is posted by now
            rows = await r.familiar.db.fetchall(
                "SELECT content FROM turns WHERE role = 'user'", (), what="bad"
            )
            assert r.posted(FIRST_CHANNEL)[-1:] == ["noted."]
            assert any(item.nonce in row[0] for row in rows)
            assert r.orchestrator.stats.failed == 0
            assert r.supervisor.statuses["history_writer"].restarts == 0
            fenced, escapes = fence_report(r.llm.chat_requests, item.nonce)
            assert fenced >= 1 and escapes == []
            assert hidden_characters(r.llm.chat_requests) == []

    async def test_no_slash_command_takes_free_text_yet(self, tmp_path: Path) -> None:
        """No synced slash command has an option; adding one must add it to this corpus run."""
        async with rig(tmp_path) as r:
            commands = r.discord.synced_commands(GUILD_ID)

        def options(command: dict[str, Any]) -> list[str]:
            found = []
            for option in command.get("options") or []:
                if option.get("type") in (1, 2):  # subcommand (group): look inside
                    found += options(option)
                else:
                    found.append(f"{command['name']}.{option['name']}")
            return found

        assert commands
        assert [o for c in commands for o in options(c)] == [], (
            "a slash command now takes an option: drive tests/bad_inputs.py (the corpus) through it "
            "with FakeDiscord.slash(name, {option: item.text}) in this class"
        )


@pytest.mark.slow
def _utf8_writable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class TestTerminalEntryPoint:
    async def test_corpus_on_stdin(self, tmp_path: Path) -> None:
        """`familiar chat` answers every line of every item, fenced, and exits 0."""
        # Text that cannot be written as UTF-8 (lone surrogates) cannot be typed on a terminal;
        # undecodable bytes on stdin have their own test below.
        items = [item for item in load_corpus(run="terminal") if _utf8_writable(item.text)]
        # stdin is read with universal newlines (\r, \n, \r\n); blank lines are skipped.
        lines = [line for item in items for line in re.split(r"\r\n|\r|\n", item.text)]
        lines = [line for line in lines if line.strip()]
        async with ScriptedOpenRouter() as llm:
            code, out, err = await run_familiar(
                "chat",
                cwd=tmp_path,
                env={
                    "OPENROUTER_BASE_URL": llm.api_base,
                    "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
                    "LLM_MAX_RETRIES": "0",
                },
                stdin="\n".join(item.text for item in items) + "\n",
                timeout_s=timeout_s(90),
            )
            requests = llm.chat_requests
        assert code == 0, err[-3000:]
        assert "Traceback" not in err
        replies = out.count("Familiar: noted.")
        assert replies == len(requests) == len(lines), (replies, len(requests), len(lines))
        truncated = out.count(TRUNCATION_NOTICE)
        assert truncated == sum(item.expect == "truncated" for item in items)
        for item in items:
            if item.nonce:
                fenced, escapes = fence_report(requests, item.nonce)
                assert escapes == [] and fenced >= 1, (item.id, escapes[:2])
        assert hidden_characters(requests) == []
        record(
            "bad-input",
            "terminal (familiar chat stdin)",
            items=len(items),
            lines=len(lines),
            crashes=0,
            escapes=0,
        )

    async def test_undecodable_bytes_on_stdin(self, tmp_path: Path) -> None:
        """A line of invalid UTF-8 is answered (with replacement characters), and its turn stored."""
        async with ScriptedOpenRouter() as llm:
            env = {
                "OPENROUTER_BASE_URL": llm.api_base,
                "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
                "LLM_MAX_RETRIES": "0",
            }
            from tests.familiar_process import start_familiar

            process = await start_familiar("chat", cwd=tmp_path, env=env, stdin=True)
            out, err = await asyncio.wait_for(
                process.communicate(b"hello \xff\xfe there\n"), timeout=timeout_s(60)
            )
        assert process.returncode == 0
        assert out.decode().count("Familiar: noted.") == 1, err.decode()[-2000:]
        assert b"Traceback" not in err


class TestCharacterFileEntryPoint:
    def test_corpus_as_name_alias_and_persona(self, tmp_path: Path) -> None:
        """Each item as display name, alias or persona is refused with a named error or cleaned."""
        counts = {"refused": 0, "accepted": 0}
        for index, item in enumerate(load_corpus(run="character", known_bugs=True)):
            for field in ("display_name", "aliases", "persona"):
                familiar_dir = tmp_path / f"{index}-{field}"
                familiar_dir.mkdir()
                value = item.text
                if field == "persona":
                    (familiar_dir / "character.md").write_bytes(
                        value.encode("utf-8", errors="surrogatepass")
                    )
                else:
                    encoded = json.dumps([value] if field == "aliases" else value)
                    (familiar_dir / "character.toml").write_text(
                        f"[familiar]\n{field} = {encoded}\n", encoding="utf-8"
                    )
                try:
                    character = load_character("bad", familiar_dir)
                except CharacterConfigError as exc:
                    counts["refused"] += 1
                    message = str(exc) + " ".join(exc.problems)
                    assert str(familiar_dir) in message, (item.id, field, message[:300])
                    if item.nonce:
                        assert item.nonce not in message, (item.id, field)
                    continue
                counts["accepted"] += 1
                prompt = assemble(
                    PromptInputs(familiar_name=character.display_name, persona=character.persona),
                    PromptBudget(),
                )
                system = prompt.messages[0]["content"]
                hidden = {
                    c
                    for c in system
                    if ord(c) < 32 and c not in "\t\n" or 0x202A <= ord(c) <= 0x202E
                }
                assert hidden == set(), (item.id, field, hidden)
                assert len(character.display_name) <= 64
        assert counts["refused"] and counts["accepted"]
        record("bad-input", "character files (name, alias, persona)", **counts)


class TestSettingsEntryPoint:
    FIELDS = (
        "familiar_id",
        "discord_dm_allowlist",
        "openrouter_api_key",
        "openrouter_base_url",
        "log_level",
        "dashboard_host",
    )

    def test_corpus_as_setting_values(self, tmp_path: Path) -> None:
        """Each item as a setting's value is accepted or refused with a ConfigError that never echoes it."""
        counts = {"refused": 0, "accepted": 0}
        for item in load_corpus(run="settings", known_bugs=True):
            for field in self.FIELDS:
                try:
                    load_settings(env_file=None, environ={}, **{field: item.text})
                except ConfigError as exc:
                    counts["refused"] += 1
                    message = str(exc) + " ".join(exc.problems)
                    assert field.upper() in message, (item.id, field)
                    if item.nonce:
                        assert item.nonce not in message, (item.id, field, message[:300])
                    continue
                counts["accepted"] += 1
            env_file = tmp_path / f"{item.id}.env"
            # Valid UTF-8 here; a file that is not UTF-8 at all is test_env_file_not_utf8.
            env_file.write_bytes(f"FAMILIAR_ID={item.text}\n".encode("utf-8", errors="replace"))
            try:
                load_settings(env_file=env_file, environ={})
            except ConfigError as exc:
                if item.nonce:
                    assert item.nonce not in str(exc) + " ".join(exc.problems)
        assert counts["refused"] and counts["accepted"]
        record("bad-input", "settings values and .env", **counts)

    async def test_env_file_not_utf8(self, tmp_path: Path) -> None:
        """A .env saved in another encoding stops `familiar check` with exit 2 and a message."""
        (tmp_path / ".env").write_bytes(
            b"FAMILIAR_ID=caf\xe9\nOPENROUTER_API_KEY=k\xff\xfe-123456\n"
        )
        code, _, err = await run_familiar("check", cwd=tmp_path)
        assert "Traceback" not in err, err[-1500:]
        assert code == 2 and ".env" in err


# --- Twitch ----------------------------------------------------------------------------------

REWARD = "Ask the familiar"
TWITCH_TOML = f"""
[twitch]
redemptions = ["{REWARD}"]
# A moderator bot's send limit: the run posts a reply per turn and a notice per long input.
chat_messages_per_30s = 100
"""
TWITCH_CUT = "\u2026[truncated"  # the visible cut of a viewer's words inside an event


def _fence_with(requests: list[Any], nonce: str) -> str:
    """The first data fence (in any prompt) that holds ``nonce``."""
    for request in requests:
        for message in request.json.get("messages", []):
            content = message.get("content")
            if not isinstance(content, str) or nonce not in content:
                continue
            for fence in FENCE.findall(content):
                if nonce in fence:
                    return fence
    return ""


class TestTwitchEntryPoints:
    async def test_corpus_through_chat_names_and_redemptions(self, tmp_path: Path) -> None:
        """Every item as an @-mention in chat (its author's display name too) and as a redemption's input: stored, answered, fenced."""
        chat_items = load_corpus(run="twitch-chat")
        redeemed = load_corpus(run="twitch-redemption")
        async with (
            RigTwitch(chat_limit=10_000) as fake,
            ScriptedOpenRouter(expected_api_key=LLM_KEY) as llm,
            twitch_rig(tmp_path, toml=TWITCH_TOML, twitch=fake, llm=llm) as t,
        ):
            # 1. Chat: each item @-mentions the familiar, from a viewer whose display name is it.
            for index, item in enumerate(chat_items):
                viewer = TwitchUser(str(7000 + index), f"viewer{index}", item.text[:100])
                assert await fake.chat(item.text, user=viewer, mention_bot=True)
            chat = t.service.chat
            assert chat is not None
            await fake.wait_for(
                lambda: chat.stats.addressed >= len(chat_items), timeout_s=timeout_s(30)
            )
            await t.settle()
            chat_requests = len(llm.chat_requests)
            # 2. Redemptions of an answered reward, each with an item as the viewer's input.
            for index, item in enumerate(redeemed):
                redeemer = TwitchUser(str(8000 + index), f"redeemer{index}", item.text[:100])
                assert await fake.redeem(REWARD, item.text, user=redeemer)
            events = t.service.events
            assert events is not None
            await fake.wait_for(
                lambda: events.counts["redemption:accepted"] >= len(redeemed),
                timeout_s=timeout_s(30),
            )
            await t.settle()

            stats = t.r.orchestrator.stats
            assert stats.failed == 0 and stats.history_refused == 0, stats
            assert t.r.supervisor.statuses["history_writer"].restarts == 0
            assert t.r.supervisor.statuses["twitch"].restarts == 0
            requests = llm.chat_requests
            rows = "\n".join(await t.input_rows())
            sent = t.sent()
            assert t.r.log.errors() == [], t.r.log.errors()[:3]

        # Every turn was answered, and each long chat message got its notice, in chat.
        assert sent.count("noted.") == len(requests), (len(requests), sent[:5])
        notices = sum(TRUNCATION_NOTICE in message for message in sent)
        assert notices == sum(item.expect == "truncated" for item in chat_items)
        fenced_total = 0
        cut = 0
        for item in chat_items + redeemed:
            if not item.nonce:
                continue  # crash check only
            fenced, escapes = fence_report(requests, item.nonce)
            assert escapes == [], (item.id, escapes[:3])
            assert fenced >= 1, f"{item.id}: marker never reached the model"
            assert item.nonce in rows, f"{item.id}: not in history"
            fenced_total += fenced
        for item in redeemed:
            if not item.nonce:
                continue
            # The viewer's words are cut visibly at max_viewer_text_chars (300), never silently.
            was_cut = TWITCH_CUT in _fence_with(requests, item.nonce)
            if item.expect == "truncated":
                assert was_cut, item.id
            if was_cut:
                assert len(item.text) > 300, item.id
            cut += was_cut
        assert hidden_characters(requests) == []
        record(
            "bad-input",
            "twitch (chat, display name, redemption input)",
            items=len(chat_items),
            entry_points=3,
            crashes=0,
            escapes=0,
            requests_checked=len(requests),
            chat_turns=chat_requests,
            fenced_occurrences=fenced_total,
            chat_notices=notices,
            redemptions_cut=cut,
        )


# --- Voice transcripts -----------------------------------------------------------------------

TURN_CAP = 2000  # TurnConfig.max_turn_chars: a longer single transcript is cut to it


class TestTranscriptEntryPoint:
    async def test_corpus_as_final_transcripts(self, tmp_path: Path) -> None:
        """Every item, as what Deepgram heard a member say, is answered out loud, stored and fenced."""
        items = load_corpus(run="transcript")
        async with (
            ScriptedOpenRouter(expected_api_key=LLM_KEY) as llm,
            voice_rig(tmp_path, llm=llm, speakers=len(items)) as v,
        ):
            r = v.rig
            await v.join()
            spoken: list[str] = []
            for count, item in enumerate(items, start=1):
                # Named, as a mention is on Discord: unaddressed voice turns close together
                # are only listened to. Each item is a new member, so a new Deepgram session.
                said = f"Familiar, {item.text}"
                spoken.append(said)
                await v.say(said, seconds=0.2, pace_s=0.01)
                await v.wait_utterances(count)
                await v.settle()
            stats = r.orchestrator.stats
            assert stats.failed == 0 and stats.history_refused == 0, stats
            assert r.supervisor.statuses["history_writer"].restarts == 0
            assert v.manager.stats.receive.stream_failures == 0
            assert v.manager.listener is not None
            cut = v.manager.listener.detector.truncated
            rows = await v.voice_rows()
            requests = r.llm.chat_requests
            posted = v.posted()
            assert r.log.errors() == [], r.log.errors()[:3]

        # Every turn was answered out loud (nothing posted as text: no fallback, no notice).
        assert [text for role, text in rows if role == "assistant"] == ["noted."] * len(items)
        assert posted == [], posted[:3]
        assert len(requests) == len(items)
        # An oversized transcript is cut to the turn cap (marker first, so it survives); the
        # detector counts cut interims too.
        oversized = [said for said in spoken if len(" ".join(said.split())) > TURN_CAP]
        assert cut >= len(oversized) > 0
        users = [text for role, text in rows if role == "user"]
        assert len(users) == len(items) and all(len(text) <= TURN_CAP for text in users)
        fenced_total = 0
        for item in items:
            if not item.nonce:
                continue  # crash check only
            fenced, escapes = fence_report(requests, item.nonce)
            assert escapes == [], (item.id, escapes[:3])
            assert fenced >= 1, f"{item.id}: marker never reached the model"
            assert any(item.nonce in text for text in users), f"{item.id}: not in history"
            fenced_total += fenced
        assert hidden_characters(requests) == []
        record(
            "bad-input",
            "voice transcripts (Deepgram final)",
            items=len(items),
            conversation=VOICE_KEY.as_str(),
            crashes=0,
            escapes=0,
            requests_checked=len(requests),
            fenced_occurrences=fenced_total,
            cut_at_turn_cap=len(oversized),
        )
