"""Gather what one turn's prompt is built from: persona, notes, memory, history, input.

The assembly itself is sans-I/O (:mod:`familiar_connect.core.prompt`); this
module does the reading. It keeps the hot path short: a conversation's recent
history is a bounded in-memory window (loaded once from SQLite when the
conversation's actor starts, then appended to as turns happen), operator notes
are cached for a few seconds, the speakers' people notes are cached until the
store writes them (or for a minute, to pick up edits made by hand), and only a
bounded full-text search reads the disk on every turn.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from familiar_connect.character import Character
from familiar_connect.core.events import Author, ConversationKey
from familiar_connect.core.prompt import (
    AssembledPrompt,
    HistoryLine,
    InputItem,
    MemorySnippet,
    PromptBudget,
    PromptInputs,
    assemble,
)
from familiar_connect.errors import FamiliarError, MemoryStoreError
from familiar_connect.memory.async_store import AsyncMemoryStore
from familiar_connect.memory.layout import SELF_DIR, people_note_path
from familiar_connect.storage.history import HistoryStore, Turn
from familiar_connect.storage.notes_index import NotesIndex

__all__ = ["ContextBuilder", "HistoryWindow"]

log = structlog.get_logger(__name__)

_MAX_SELF_NOTES = 8
_MAX_NOTE_CHARS = 6_000
_MAX_SEARCH_QUERY_CHARS = 300
_MAX_CACHED_PEOPLE_NOTES = 1_024


class HistoryWindow:
    """The last ``max_lines`` lines of one conversation, oldest first, in memory."""

    def __init__(self, *, max_lines: int) -> None:
        self._lines: deque[HistoryLine] = deque(maxlen=max_lines)

    def extend_from_turns(
        self,
        turns: Iterable[Turn],
        *,
        familiar_id: str,
        exclude_author: Callable[[str, str], bool] | None = None,
    ) -> None:
        for turn in turns:
            if exclude_author is not None and exclude_author(turn.platform, turn.author_id):
                continue
            if turn.role == "assistant" or turn.author_id == familiar_id:
                self.add_assistant(turn.content)
            elif turn.role in ("user", "event"):
                self._lines.append(
                    HistoryLine("user", turn.author_name, turn.content, _source_of(turn.modality))
                )

    def add_user(self, author_name: str, text: str, source: str) -> None:
        self._lines.append(HistoryLine("user", author_name, text, source))

    def add_assistant(self, text: str) -> None:
        if text:
            self._lines.append(HistoryLine("assistant", None, text, "familiar"))

    def lines(self) -> list[HistoryLine]:
        return list(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


def _source_of(modality: str) -> str:
    return {
        "voice": "voice transcript",
        "twitch": "twitch chat",
        "terminal": "terminal message",
    }.get(modality, "discord message")


@dataclass(frozen=True, slots=True)
class _CachedNotes:
    loaded_ns: int
    snippets: tuple[MemorySnippet, ...]


@dataclass(frozen=True, slots=True)
class _CachedNote:
    loaded_ns: int
    text: str | None  # None: the person has no note (the common case, cached too)


class ContextBuilder:
    """Reads memory and builds the prompt for a turn.

    Args:
        character: the familiar (persona, name, limits).
        memory: the notes store.
        notes_index: full-text index of the notes, or None to skip search.
        history: the history store, read once per conversation to seed its window.
        budget: token caps per prompt layer.
        history_lines: lines kept per conversation window.
        search_hits: full-text hits added to the prompt per turn.
        operator_notes_ttl_s: how long ``self/`` notes are cached.
        people_notes_ttl_s: how long a person's note is cached; a write through the
            store forgets it at once, the TTL only bounds how long an edit made by
            hand outside the store goes unseen.
    """

    def __init__(
        self,
        *,
        character: Character,
        memory: AsyncMemoryStore | None,
        notes_index: NotesIndex | None,
        history: HistoryStore | None,
        budget: PromptBudget,
        history_lines: int = 60,
        search_hits: int = 3,
        operator_notes_ttl_s: float = 10.0,
        people_notes_ttl_s: float = 60.0,
        exclude_author: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.character = character
        self.memory = memory
        self.notes_index = notes_index
        self.history = history
        self.budget = budget
        self.history_lines = history_lines
        self.search_hits = search_hits
        self._operator_notes_ttl_ns = int(operator_notes_ttl_s * 1e9)
        self._operator_notes: _CachedNotes | None = None
        self._people_notes_ttl_ns = int(people_notes_ttl_s * 1e9)
        self._people_notes: OrderedDict[str, _CachedNote] = OrderedDict()
        self._note_writes = 0
        self.exclude_author = exclude_author
        if memory is not None:
            memory.add_write_listener(self._forget_note)

    async def new_window(
        self, key: ConversationKey, *, familiar_id: str, before: datetime | None = None
    ) -> HistoryWindow:
        """A history window for ``key``, seeded from the store (empty if it cannot be read).

        Args:
            key: the conversation.
            familiar_id: the familiar's own author id (its turns become assistant lines).
            before: only turns stored before this moment (the inputs about to be answered
                are added separately).
        """
        window = HistoryWindow(max_lines=self.history_lines)
        if self.history is None:
            return window
        try:
            turns = await self.history.recent(
                key.platform.value, key.as_str(), limit=self.history_lines
            )
        except FamiliarError as exc:
            log.warning("history_seed_failed", conversation=key.as_str(), error=str(exc))
            return window
        if before is not None:
            turns = [turn for turn in turns if turn.created_at < before]
        window.extend_from_turns(turns, familiar_id=familiar_id, exclude_author=self.exclude_author)
        return window

    async def build(
        self,
        *,
        key: ConversationKey,
        window: HistoryWindow,
        inputs: Sequence[tuple[Author, str, str]],
        platform_hint: str,
    ) -> AssembledPrompt:
        """Assemble the prompt for one turn.

        Args:
            key: the conversation.
            window: its history so far (not including ``inputs``).
            inputs: ``(author, text, source)`` for each new piece of input, oldest first.
            platform_hint: where the conversation is, for the model.

        Reading memory never fails a turn: an unreadable note is logged and left out.
        """
        authors = {author.key: author for author, _, _ in inputs}
        query = " ".join(text for _, text, _ in inputs)[-_MAX_SEARCH_QUERY_CHARS:]
        operator_notes, people, hits = await asyncio.gather(
            self._operator_notes_snippets(),
            self._people_snippets(authors.values()),
            self._search_snippets(query),
        )
        seen = {snippet.source.split(":", 1)[1] for snippet in people}
        memory = list(people) + [hit for hit in hits if hit.source.split(":", 1)[1] not in seen]
        prompt_inputs = PromptInputs(
            familiar_name=self.character.display_name,
            persona=self.character.persona,
            operator_notes=operator_notes,
            memory=memory,
            history=window.lines(),
            new_input=[
                InputItem(author.shown_name, text, source) for author, text, source in inputs
            ],
            platform_hint=platform_hint,
            now_display=datetime.now(UTC).strftime("%A %d %B %Y, %H:%M UTC"),
        )
        return assemble(prompt_inputs, self.budget)

    async def _read(self, rel_path: str) -> str | None:
        if self.memory is None:
            return None
        try:
            return (await self.memory.read_file(rel_path))[:_MAX_NOTE_CHARS]
        except MemoryStoreError:
            return None

    async def _operator_notes_snippets(self) -> list[MemorySnippet]:
        if self.memory is None:
            return []
        now_ns = time.monotonic_ns()
        cached = self._operator_notes
        if cached is not None and now_ns - cached.loaded_ns < self._operator_notes_ttl_ns:
            return list(cached.snippets)
        snippets: list[MemorySnippet] = []
        try:
            entries = await self.memory.list_dir(SELF_DIR)
        except MemoryStoreError:
            entries = []
        for entry in entries[:_MAX_SELF_NOTES]:
            if entry.is_dir or not entry.name.endswith(".md"):
                continue
            text = await self._read(f"{SELF_DIR}/{entry.name}")
            if text:
                snippets.append(MemorySnippet(f"operator notes:{SELF_DIR}/{entry.name}", text))
        self._operator_notes = _CachedNotes(now_ns, tuple(snippets))
        return snippets

    async def _people_snippets(self, authors: Iterable[Author]) -> list[MemorySnippet]:
        snippets = []
        for author in authors:
            path = people_note_path(author.platform.value, author.user_id)
            text = await self._person_note(path)
            if text:
                snippets.append(MemorySnippet(f"memory:{path}", text))
        return snippets

    async def _person_note(self, path: str) -> str | None:
        now_ns = time.monotonic_ns()
        cached = self._people_notes.get(path)
        if cached is not None and now_ns - cached.loaded_ns < self._people_notes_ttl_ns:
            return cached.text
        writes_before = self._note_writes
        text = await self._read(path)
        # A write that landed while we read may have been forgotten before we cache: skip.
        # Only single OrderedDict operations here (each atomic under the GIL), because the
        # write listener pops entries from the store's thread.
        if self._note_writes == writes_before:
            self._people_notes.pop(path, None)  # re-inserted last: evicted last
            self._people_notes[path] = _CachedNote(now_ns, text)
            while len(self._people_notes) > _MAX_CACHED_PEOPLE_NOTES:
                self._people_notes.popitem(last=False)
        return text

    def _forget_note(self, rel_path: str, _content: str | None) -> None:
        """The store's write listener (runs on the writing thread, under the store's lock)."""
        self._note_writes += 1
        self._people_notes.pop(rel_path, None)

    async def _search_snippets(self, query: str) -> list[MemorySnippet]:
        if self.notes_index is None or not query.strip() or self.search_hits <= 0:
            return []
        try:
            hits = await self.notes_index.search(query, limit=self.search_hits)
        except FamiliarError as exc:
            log.warning("memory_search_failed", error=str(exc))
            return []
        return [MemorySnippet(f"search:{hit.rel_path}", hit.snippet) for hit in hits]
