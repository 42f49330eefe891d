"""The built-in memory tools, run through the real registry, MemoryStore and notes index."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from familiar_connect.conversation.memory_tools import (
    MAX_LIST_ENTRIES,
    memory_tools,
    writable_path,
)
from familiar_connect.conversation.tools import ToolContext, ToolRegistry, ToolResult
from familiar_connect.errors import MemoryStorePathError, ToolArgumentError, ToolError
from familiar_connect.llm.types import ToolCall
from familiar_connect.memory import AsyncMemoryStore, MemoryStore, MemoryStoreLimits
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.notes_index import NotesIndex

CTX = ToolContext(
    conversation="discord:500", platform="discord", author_id="1001", author_name="Alice"
)


@pytest.fixture(name="root")
def fixture_root(tmp_path: Path) -> Path:
    # <tmp>/familiar/memory, so "../../.env" from the root names <tmp>/.env.
    (tmp_path / ".env").write_text("OPENROUTER_API_KEY=sk-or-v1-secret\n")
    return tmp_path / "familiar" / "memory"


@pytest.fixture(name="astore")
def fixture_astore(root: Path, tmp_path: Path) -> AsyncMemoryStore:
    return AsyncMemoryStore(MemoryStore(root, audit_path=tmp_path / "audit.jsonl"))


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="index")
async def fixture_index(db: Database, astore: AsyncMemoryStore) -> AsyncIterator[NotesIndex]:
    index = NotesIndex(db)
    # Wired the way the app wires it: every store write reaches the index.
    astore.add_write_listener(index.listener_for(asyncio.get_running_loop()))
    yield index
    await index.aclose()


@pytest.fixture(name="registry")
def fixture_registry(astore: AsyncMemoryStore, index: NotesIndex) -> ToolRegistry:
    registry = ToolRegistry(memory_root=astore.store.root)
    for tool in memory_tools(astore, index):
        registry.register(tool)
    return registry


async def _call(
    registry: ToolRegistry, name: str, arguments: Any, *, max_result_chars: int = 20_000
) -> tuple[ToolResult, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    result = await registry.execute(
        ToolCall(id="call_1", name=name, arguments_json=raw),
        CTX,
        timeout_s=10,
        max_result_chars=max_result_chars,
    )
    return result, json.loads(result.content)


def _files_outside(tmp_path: Path, root: Path) -> dict[str, bytes]:
    """Every regular file under tmp_path but outside the memory root, with its bytes."""
    return {
        str(path): path.read_bytes()
        for path in tmp_path.rglob("*")
        if path.is_file() and not path.is_relative_to(root) and "familiar.db" not in path.name
    }


class TestMemoryTools:
    async def test_tool_set(self, registry: ToolRegistry) -> None:
        """The six memory tools are registered, each describing the memory layout."""
        assert registry.names() == [
            "memory_list",
            "memory_read",
            "memory_search",
            "memory_glob",
            "memory_write",
            "memory_append",
        ]
        for spec in registry.specs():
            assert "people/<platform>-<user id>.md" in spec.description
            assert "self/" in spec.description

    async def test_write_is_audited(self, registry: ToolRegistry, astore: AsyncMemoryStore) -> None:
        """memory_write writes the note and the audit log records source and turn context."""
        result, body = await _call(
            registry, "memory_write", {"path": "people/discord-1001.md", "content": "# Alice\n"}
        )
        assert not result.is_error
        assert body == {"ok": True, "path": "people/discord-1001.md", "chars": 8}
        assert await astore.read_file("people/discord-1001.md") == "# Alice\n"
        [entry] = astore.audit_entries
        assert entry.source == "tool:memory_write"
        assert entry.rel_path == "people/discord-1001.md"
        assert dict(entry.context) == {"conversation": "discord:500", "author": "discord:1001"}

    async def test_append_is_audited(
        self, registry: ToolRegistry, astore: AsyncMemoryStore
    ) -> None:
        """memory_append adds to a note, audited with source tool:memory_append."""
        await _call(registry, "memory_write", {"path": "topics/tea.md", "content": "a\n"})
        _, body = await _call(
            registry, "memory_append", {"path": "topics/tea.md", "content": "b\n"}
        )
        assert body["appended_chars"] == 2
        assert await astore.read_file("topics/tea.md") == "a\nb\n"
        assert [e.source for e in astore.audit_entries] == [
            "tool:memory_write",
            "tool:memory_append",
        ]

    async def test_read_list_and_glob(
        self, registry: ToolRegistry, astore: AsyncMemoryStore
    ) -> None:
        """memory_read, memory_list and memory_glob return content, entries and paths as JSON."""
        await astore.write_file("people/discord-1.md", "hello\x07 there\n")
        await astore.write_file("topics/tea.md", "tea\n")
        _, read = await _call(registry, "memory_read", {"path": "people/discord-1.md"})
        assert read == {"path": "people/discord-1.md", "content": "hello there\n"}
        _, listed = await _call(registry, "memory_list", {})
        assert listed["entries"] == [
            {"name": "people", "is_dir": True, "size": 0},
            {"name": "topics", "is_dir": True, "size": 0},
        ]
        _, sub = await _call(registry, "memory_list", {"path": "topics"})
        assert sub["entries"] == [{"name": "tea.md", "is_dir": False, "size": 4}]
        _, globbed = await _call(registry, "memory_glob", {"pattern": "**/*.md"})
        assert globbed["paths"] == ["people/discord-1.md", "topics/tea.md"]

    async def test_list_is_capped(self, registry: ToolRegistry, root: Path) -> None:
        """A directory with more entries than the cap lists the first ones and counts the rest."""
        (root / "topics").mkdir(parents=True)
        for index in range(MAX_LIST_ENTRIES + 7):
            (root / "topics" / f"t{index:04d}.md").write_text("x")
        _, body = await _call(registry, "memory_list", {"path": "topics"})
        assert len(body["entries"]) == MAX_LIST_ENTRIES
        assert body["more_entries"] == 7

    async def test_traversal_is_refused(
        self, registry: ToolRegistry, root: Path, tmp_path: Path, astore: AsyncMemoryStore
    ) -> None:
        """Reading or writing ../../.env gives a path error result and touches nothing outside."""
        before = _files_outside(tmp_path, root)
        read, read_body = await _call(registry, "memory_read", {"path": "../../.env"})
        write, write_body = await _call(
            registry, "memory_write", {"path": "../../.env", "content": "pwned"}
        )
        glob, glob_body = await _call(registry, "memory_glob", {"pattern": "../../*"})
        for result, body in ((read, read_body), (write, write_body), (glob, glob_body)):
            assert result.is_error and body["error"] == "memory_store_path_error"
            assert "sk-or-v1" not in result.content and str(tmp_path) not in result.content
        assert _files_outside(tmp_path, root) == before
        assert astore.audit_entries == []

    @pytest.mark.parametrize(
        "path", ["self/persona.md", "./self/x.md", "people/../self/x.md", "SELF/x.md", "self//a.md"]
    )
    async def test_self_is_read_only(
        self, registry: ToolRegistry, astore: AsyncMemoryStore, path: str
    ) -> None:
        """Writes and appends under self/ are refused; reading the operator's notes works."""
        astore.store.write_file("self/persona.md", "operator notes\n", source="operator")
        for tool in ("memory_write", "memory_append"):
            result, body = await _call(registry, tool, {"path": path, "content": "hijack"})
            assert result.error_kind == "tool_error"
            assert "only the operator" in body["message"]
        assert [e.source for e in astore.audit_entries] == ["operator"]
        _, read = await _call(registry, "memory_read", {"path": "self/persona.md"})
        assert read["content"] == "operator notes\n"

    @pytest.mark.parametrize("path", ["people/a.txt", "people/a", "notes/.md", "people/"])
    async def test_only_markdown_is_writable(
        self, registry: ToolRegistry, astore: AsyncMemoryStore, path: str
    ) -> None:
        """Paths that are not .md files are refused as invalid arguments."""
        result, _ = await _call(registry, "memory_write", {"path": path, "content": "x"})
        assert result.error_kind == "invalid_arguments"
        assert astore.audit_entries == []

    async def test_search_finds_note_after_write(
        self, registry: ToolRegistry, index: NotesIndex
    ) -> None:
        """A note written through memory_write is found by memory_search via the index."""
        await _call(
            registry,
            "memory_write",
            {"path": "people/discord-1001.md", "content": "Alice adores lighthouses.\n"},
        )
        await index.drain()
        _, body = await _call(registry, "memory_search", {"query": "lighthouses"})
        assert [hit["path"] for hit in body["hits"]] == ["people/discord-1001.md"]
        assert "lighthouses" in body["hits"][0]["text"]

    async def test_search_without_index_is_literal(self, astore: AsyncMemoryStore) -> None:
        """Without an index, memory_search greps the query as literal text, not a regex."""
        registry = ToolRegistry(memory_root=astore.store.root)
        for tool in memory_tools(astore, None):
            registry.register(tool)
        await astore.write_file("topics/a.md", "one (a+b) two\nplain aab line\n")
        _, body = await _call(registry, "memory_search", {"query": "(a+b)"})
        assert body["hits"] == [{"path": "topics/a.md", "line": 1, "text": "one (a+b) two"}]
        _, limited = await _call(registry, "memory_search", {"query": "a", "limit": 1})
        assert len(limited["hits"]) == 1

    async def test_search_limit_is_bounded(self, registry: ToolRegistry) -> None:
        """A search limit above 20 is refused by the schema."""
        result, body = await _call(registry, "memory_search", {"query": "x", "limit": 21})
        assert result.error_kind == "invalid_arguments" and "'limit'" in body["message"]

    async def test_model_mistakes_are_results(self, registry: ToolRegistry) -> None:
        """Unknown tools, broken JSON and schema violations come back as error results."""
        unknown, body = await _call(registry, "memory_delete", {"path": "x.md"})
        assert unknown.error_kind == "unknown_tool" and "memory_write" in body["available"]
        broken, _ = await _call(registry, "memory_read", '{"path": "a.md"')
        assert broken.error_kind == "invalid_arguments"
        wrong, body = await _call(registry, "memory_write", {"path": "a.md"})
        assert wrong.error_kind == "invalid_arguments" and "'content'" in body["message"]

    async def test_large_read_is_truncated_json(
        self, registry: ToolRegistry, astore: AsyncMemoryStore
    ) -> None:
        """Reading a note bigger than the result cap gives truncated, valid JSON."""
        await astore.write_file("topics/long.md", "word " * 20_000)
        result, body = await _call(
            registry, "memory_read", {"path": "topics/long.md"}, max_result_chars=2_000
        )
        assert len(result.content) <= 2_000
        assert body["truncated"] is True and body["content"].startswith("word word")

    async def test_store_size_cap_reported(self, tmp_path: Path) -> None:
        """Content over the store's byte cap gives a memory_store_size_limit_error result."""
        store = AsyncMemoryStore(
            MemoryStore(tmp_path / "m", limits=MemoryStoreLimits(max_file_bytes=100))
        )
        registry = ToolRegistry(memory_root=store.store.root)
        for tool in memory_tools(store, None):
            registry.register(tool)
        # 60 characters pass the schema's character cap but are 120 bytes of UTF-8.
        result, _ = await _call(registry, "memory_write", {"path": "a.md", "content": "é" * 60})
        assert result.error_kind == "memory_store_size_limit_error"

    async def test_missing_note_is_a_store_error(self, registry: ToolRegistry) -> None:
        """Reading a note that does not exist gives memory_store_error saying it was not found."""
        result, body = await _call(registry, "memory_read", {"path": "people/nobody.md"})
        assert result.error_kind == "memory_store_error"
        assert body["message"].startswith("not found")


class TestWritablePath:
    def test_folds_dots(self) -> None:
        """Dot segments are folded lexically."""
        assert writable_path("people/./x/../discord-1.md") == "people/discord-1.md"

    def test_escape_is_a_path_error(self) -> None:
        """A .. above the root raises MemoryStorePathError."""
        with pytest.raises(MemoryStorePathError):
            writable_path("../x.md")

    def test_refusals(self) -> None:
        """self/ raises ToolError; non-Markdown and empty paths raise ToolArgumentError."""
        with pytest.raises(ToolError):
            writable_path("Self/a.md")
        with pytest.raises(ToolArgumentError):
            writable_path("a.py")
        with pytest.raises(ToolArgumentError):
            writable_path("./")
