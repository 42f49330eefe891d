"""Tests for MemoryStore: listing, reading, glob, grep, writes, caps, symlinks and listeners."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import UTC
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import familiar_connect.memory as memory_pkg
from familiar_connect import errors
from familiar_connect.errors import ConfigError
from familiar_connect.memory.audit import verify_audit
from familiar_connect.memory.store import (
    GrepHit,
    MemoryEntry,
    MemoryStore,
    MemoryStoreError,
    MemoryStoreLimits,
    MemoryStorePathError,
    MemoryStoreSizeLimitError,
)

TEMP_MARK = ".tmp-"


def all_names(root: Path) -> list[str]:
    """Every path under ``root`` (files, dirs, symlinks), relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def temp_files(root: Path) -> list[str]:
    """Names under ``root`` that look like the store's temp files."""
    return [name for name in all_names(root) if TEMP_MARK in name]


@pytest.fixture(name="base")
def fixture_base(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(name="outside")
def fixture_outside(base: Path) -> Path:
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE-SECRET\n")
    return outside


@pytest.fixture(name="store")
def fixture_store(base: Path) -> MemoryStore:
    return MemoryStore(base / "mem")


@pytest.fixture(name="small")
def fixture_small(base: Path) -> MemoryStore:
    limits = MemoryStoreLimits(max_file_bytes=10, max_results_per_op=3, max_files_per_dir=4)
    return MemoryStore(base / "small", limits=limits)


class TestExports:
    def test_errors_are_reexported_from_store_and_package(self) -> None:
        """The store module and the package re-export the error classes from errors.py."""
        assert MemoryStoreError is errors.MemoryStoreError
        assert MemoryStorePathError is errors.MemoryStorePathError
        assert MemoryStoreSizeLimitError is errors.MemoryStoreSizeLimitError
        assert memory_pkg.MemoryStoreError is errors.MemoryStoreError
        assert memory_pkg.MemoryStorePathError is errors.MemoryStorePathError
        assert memory_pkg.MemoryStoreSizeLimitError is errors.MemoryStoreSizeLimitError
        assert issubclass(MemoryStorePathError, MemoryStoreError)
        assert issubclass(MemoryStoreSizeLimitError, MemoryStoreError)


class TestMemoryStoreLimits:
    def test_defaults(self) -> None:
        """Default caps are 256 KiB per file, 1000 results and 10,000 entries per directory."""
        limits = MemoryStoreLimits()
        assert limits.max_file_bytes == 256 * 1024
        assert limits.max_results_per_op == 1000
        assert limits.max_files_per_dir == 10_000

    def test_frozen(self) -> None:
        """Limits cannot be changed after construction."""
        limits = MemoryStoreLimits()
        with pytest.raises(AttributeError):
            limits.max_file_bytes = 1  # type: ignore[misc]

    @pytest.mark.parametrize("field", ["max_file_bytes", "max_results_per_op", "max_files_per_dir"])
    def test_non_positive_rejected(self, field: str) -> None:
        """A zero cap is a configuration error."""
        with pytest.raises(ConfigError):
            MemoryStoreLimits(**{field: 0})


class TestMemoryStoreInit:
    def test_creates_root_with_parents(self, base: Path) -> None:
        """The root and its missing parents are created and exposed resolved."""
        store = MemoryStore(base / "a" / "b" / "mem")
        assert store.root == (base / "a" / "b" / "mem").resolve()
        assert store.root.is_dir()
        assert store.limits == MemoryStoreLimits()

    def test_default_audit_path_is_sibling_of_root(self, base: Path) -> None:
        """Without audit_path the log is <root>.audit.jsonl next to the root."""
        store = MemoryStore(base / "mem")
        assert store.audit_path == store.root.parent / "mem.audit.jsonl"

    def test_explicit_audit_path(self, base: Path) -> None:
        """An explicit audit path is used, and its directory created."""
        store = MemoryStore(base / "fam" / "memory", audit_path=base / "fam" / "x" / "audit.jsonl")
        store.write_file("a.md", "hi")
        assert (base / "fam" / "x" / "audit.jsonl").is_file()

    def test_audit_path_inside_root_rejected(self, base: Path) -> None:
        """An audit log inside the memory root would be writable by the model, so it is refused."""
        with pytest.raises(MemoryStoreError):
            MemoryStore(base / "mem", audit_path=base / "mem" / "audit.jsonl")

    def test_root_that_is_a_file_rejected(self, base: Path) -> None:
        """A root path naming a regular file raises MemoryStoreError."""
        (base / "file").write_text("x")
        with pytest.raises(MemoryStoreError):
            MemoryStore(base / "file")

    def test_stale_temp_files_removed_at_start(self, base: Path) -> None:
        """Temp files of the store's own naming pattern are deleted when a store opens."""
        root = base / "mem"
        (root / "sub").mkdir(parents=True)
        (root / ".a.md.tmp-0123456789abcdef").write_text("partial")
        (root / "sub" / ".b.md.tmp-fedcba9876543210").write_text("partial")
        (root / ".c.md.tmp-notours").write_text("keep")
        MemoryStore(root)
        assert all_names(root) == [".c.md.tmp-notours", "sub"]


class TestListDir:
    def test_sorted_entries_with_metadata(self, store: MemoryStore) -> None:
        """Entries come sorted by name; dirs report size 0; modified is aware UTC."""
        store.write_file("b.md", "hello")
        store.write_file("a/x.md", "x")
        entries = store.list_dir()
        assert [e.name for e in entries] == ["a", "b.md"]
        assert entries[0] == MemoryEntry("a", True, 0, entries[0].modified)
        assert entries[1].is_dir is False and entries[1].size_bytes == 5
        for entry in entries:
            assert entry.modified.tzinfo is not None
            assert entry.modified.utcoffset() == UTC.utcoffset(None)

    def test_subdirectory(self, store: MemoryStore) -> None:
        """A relative directory path lists that directory."""
        store.write_file("people/alice.md", "a")
        store.write_file("people/bob.md", "bb")
        assert [(e.name, e.size_bytes) for e in store.list_dir("people")] == [
            ("alice.md", 1),
            ("bob.md", 2),
        ]

    def test_not_found(self, store: MemoryStore) -> None:
        """Listing a missing directory raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError, match="not found"):
            store.list_dir("nope")

    def test_not_a_directory(self, store: MemoryStore) -> None:
        """Listing a file raises MemoryStoreError."""
        store.write_file("f.md", "x")
        with pytest.raises(MemoryStoreError, match="not a directory"):
            store.list_dir("f.md")

    def test_at_cap_ok_over_cap_raises(self, small: MemoryStore) -> None:
        """A directory with exactly max_files_per_dir entries lists; one more raises."""
        for i in range(4):
            (small.root / f"f{i}").write_text("x")
        assert len(small.list_dir()) == 4
        (small.root / "f4").write_text("x")
        with pytest.raises(MemoryStoreSizeLimitError):
            small.list_dir()

    def test_escaping_symlinks_dropped_inner_kept(self, store: MemoryStore, outside: Path) -> None:
        """Symlinks out of the root are left out; in-root symlinks show their target's kind."""
        store.write_file("sub/real.md", "12345")
        os.symlink(outside / "secret.txt", store.root / "file_out")
        os.symlink(outside, store.root / "dir_out")
        os.symlink("sub/real.md", store.root / "file_in")
        os.symlink("sub", store.root / "dir_in")
        os.symlink("missing.md", store.root / "dangling")
        entries = {e.name: e for e in store.list_dir()}
        assert sorted(entries) == ["dir_in", "file_in", "sub"]
        assert entries["file_in"].size_bytes == 5 and not entries["file_in"].is_dir
        assert entries["dir_in"].is_dir

    def test_temp_files_hidden(self, store: MemoryStore) -> None:
        """The store's temp files never appear in listings."""
        store.write_file("a.md", "x")
        (store.root / ".a.md.tmp-0123456789abcdef").write_text("partial")
        assert [e.name for e in store.list_dir()] == ["a.md"]


class TestReadFile:
    def test_round_trip_unicode(self, store: MemoryStore) -> None:
        """What was written reads back identically, including non-ASCII text."""
        store.write_file("notes/ünï.md", "héllo ✓\nline 2\n")
        assert store.read_file("notes/ünï.md") == "héllo ✓\nline 2\n"

    def test_not_found(self, store: MemoryStore) -> None:
        """A missing file raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError, match="not found"):
            store.read_file("missing.md")

    def test_missing_parent(self, store: MemoryStore) -> None:
        """A file under a missing directory raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError, match="not found"):
            store.read_file("nodir/missing.md")

    @pytest.mark.parametrize("path", ["", ".", "sub", "sub/"])
    def test_directory_as_file(self, store: MemoryStore, path: str) -> None:
        """Reading a directory (or the root) raises MemoryStoreError."""
        store.write_file("sub/a.md", "x")
        with pytest.raises(MemoryStoreError, match="directory"):
            store.read_file(path)

    def test_non_utf8(self, store: MemoryStore) -> None:
        """A file that is not UTF-8 raises MemoryStoreError, not UnicodeDecodeError."""
        (store.root / "bin.md").write_bytes(b"\xff\xfe\x00bad")
        with pytest.raises(MemoryStoreError, match="UTF-8") as info:
            store.read_file("bin.md")
        assert isinstance(info.value.__cause__, UnicodeDecodeError)

    def test_size_cap(self, small: MemoryStore) -> None:
        """A file of exactly max_file_bytes reads; one byte more raises the size error."""
        (small.root / "ok.md").write_bytes(b"x" * 10)
        (small.root / "big.md").write_bytes(b"x" * 11)
        assert small.read_file("ok.md") == "x" * 10
        with pytest.raises(MemoryStoreSizeLimitError):
            small.read_file("big.md")

    def test_in_root_symlink_followed(self, store: MemoryStore) -> None:
        """A symlink to another file inside the root reads that file."""
        store.write_file("people/alice.md", "Alice")
        os.symlink("people/alice.md", store.root / "a.md")
        os.symlink("../people/alice.md", store.root / "people" / "same.md")
        assert store.read_file("a.md") == "Alice"
        assert store.read_file("people/same.md") == "Alice"

    def test_fifo_not_regular(self, store: MemoryStore) -> None:
        """A FIFO is refused without blocking."""
        os.mkfifo(store.root / "pipe")
        with pytest.raises(MemoryStoreError, match="regular file"):
            store.read_file("pipe")

    def test_dot_dot_inside_root_allowed(self, store: MemoryStore) -> None:
        """A '..' that stays inside the root is folded (a/../b.md is b.md)."""
        store.write_file("b.md", "B")
        assert store.read_file("a/../b.md") == "B"
        assert store.read_file("./x/y/../../b.md") == "B"

    def test_non_str_path(self, store: MemoryStore) -> None:
        """A path that is not a str raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError):
            store.read_file(b"a.md")  # type: ignore[arg-type]


class TestGlob:
    @pytest.fixture(name="tree")
    def fixture_tree(self, store: MemoryStore) -> MemoryStore:
        for path in ["a.md", "b.txt", "people/alice.md", "people/bob.md", "people/x/deep.md"]:
            store.write_file(path, path)
        return store

    def test_star_stays_in_one_directory(self, tree: MemoryStore) -> None:
        """'*' matches within one name and results are sorted."""
        assert tree.glob("*.md") == ["a.md"]
        assert tree.glob("*") == ["a.md", "b.txt", "people"]
        assert tree.glob("people/*.md") == ["people/alice.md", "people/bob.md"]

    def test_double_star_recurses(self, tree: MemoryStore) -> None:
        """'**' matches zero or more directories and output is plain string order."""
        assert tree.glob("**/*.md") == [
            "a.md",
            "people/alice.md",
            "people/bob.md",
            "people/x/deep.md",
        ]
        assert tree.glob("people/**/d*.md") == ["people/x/deep.md"]

    def test_question_and_class(self, tree: MemoryStore) -> None:
        """'?' and '[...]' match single characters within a name."""
        assert tree.glob("people/[ab]*.md") == ["people/alice.md", "people/bob.md"]
        assert tree.glob("?.md") == ["a.md"]

    def test_literal_pattern(self, tree: MemoryStore) -> None:
        """A pattern without wildcards returns the path if it exists, else nothing."""
        assert tree.glob("people/alice.md") == ["people/alice.md"]
        assert tree.glob("people/nobody.md") == []

    def test_missing_prefix_matches_nothing(self, tree: MemoryStore) -> None:
        """A wildcard under a missing or non-directory prefix returns []."""
        assert tree.glob("nodir/*") == []
        assert tree.glob("a.md/*") == []

    def test_empty_pattern(self, tree: MemoryStore) -> None:
        """An empty pattern matches nothing."""
        assert tree.glob("") == []

    def test_truncated_to_cap_keeping_first_in_order(self, small: MemoryStore) -> None:
        """Glob returns at most max_results_per_op paths, the first ones in sorted order."""
        for name in ["e", "d", "c", "b", "a"]:
            (small.root / name).write_text("x")
        assert small.glob("*") == ["a", "b", "c"]

    def test_escaping_symlinks_dropped(self, store: MemoryStore, outside: Path) -> None:
        """Symlinks leading out of the root never appear in glob results, nor do their contents."""
        store.write_file("in.md", "x")
        os.symlink(outside / "secret.txt", store.root / "out.md")
        os.symlink(outside, store.root / "outdir")
        assert store.glob("*") == ["in.md"]
        assert store.glob("**/*.txt") == []

    def test_pattern_dot_dot_folded(self, tree: MemoryStore) -> None:
        """A '..' inside the pattern that stays in the root is folded before matching."""
        assert tree.glob("people/../*.txt") == ["b.txt"]


class TestGrep:
    def test_hit_fields(self, store: MemoryStore) -> None:
        """A hit carries the path, 1-based line, line text and match offsets."""
        store.write_file("n.md", "first\nAlice likes tea\nthird\n")
        assert store.grep("likes") == [GrepHit("n.md", 2, "Alice likes tea", 6, 11)]

    def test_case_insensitive_by_default(self, store: MemoryStore) -> None:
        """Matching ignores case unless case_insensitive=False."""
        store.write_file("n.md", "Alice\n")
        assert len(store.grep("alice")) == 1
        assert store.grep("alice", case_insensitive=False) == []

    def test_one_hit_per_line_first_match(self, store: MemoryStore) -> None:
        """A line with several matches yields one hit, at the first match."""
        store.write_file("n.md", "tea and tea and tea")
        assert store.grep("tea") == [GrepHit("n.md", 1, "tea and tea and tea", 0, 3)]

    def test_crlf_lines(self, store: MemoryStore) -> None:
        """A trailing carriage return is not part of the line text."""
        store.write_file("n.md", "one\r\ntwo\r\n")
        assert store.grep("two$") == [GrepHit("n.md", 2, "two", 0, 3)]

    def test_empty_pattern(self, store: MemoryStore) -> None:
        """An empty pattern returns no hits."""
        store.write_file("n.md", "x\n")
        assert store.grep("") == []

    def test_invalid_regex(self, store: MemoryStore) -> None:
        """An invalid regular expression raises MemoryStoreError, not re.error."""
        with pytest.raises(MemoryStoreError, match="invalid grep pattern"):
            store.grep("(unclosed")

    def test_file_or_directory_scope(self, store: MemoryStore) -> None:
        """rel_path may name one file or a directory searched recursively, in path order."""
        store.write_file("people/alice.md", "tea\n")
        store.write_file("people/x/deep.md", "tea\n")
        store.write_file("people.md", "tea\n")
        store.write_file("other.md", "tea\n")
        assert [h.rel_path for h in store.grep("tea")] == [
            "other.md",
            "people.md",
            "people/alice.md",
            "people/x/deep.md",
        ]
        assert [h.rel_path for h in store.grep("tea", "people")] == [
            "people/alice.md",
            "people/x/deep.md",
        ]
        assert [h.rel_path for h in store.grep("tea", "people/alice.md")] == ["people/alice.md"]

    def test_not_found(self, store: MemoryStore) -> None:
        """Grepping a missing path raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError, match="not found"):
            store.grep("x", "missing")

    def test_skips_oversized_and_non_utf8(self, small: MemoryStore) -> None:
        """Files over the cap or not UTF-8 are skipped, others still searched."""
        (small.root / "big.md").write_text("x" * 11)
        (small.root / "bin.md").write_bytes(b"x\xff")
        (small.root / "ok.md").write_text("x\n")
        assert [h.rel_path for h in small.grep("x")] == ["ok.md"]
        assert small.grep("x", "big.md") == []

    def test_truncated_to_cap(self, small: MemoryStore) -> None:
        """At most max_results_per_op hits are returned, the first in path/line order."""
        (small.root / "a.md").write_text("x\nx\n")
        (small.root / "b.md").write_text("x\nx\n")
        hits = small.grep("x")
        assert [(h.rel_path, h.line_number) for h in hits] == [
            ("a.md", 1),
            ("a.md", 2),
            ("b.md", 1),
        ]

    def test_escaping_symlinks_not_searched(self, store: MemoryStore, outside: Path) -> None:
        """Content behind symlinks out of the root is never searched."""
        os.symlink(outside / "secret.txt", store.root / "out.md")
        os.symlink(outside, store.root / "outdir")
        store.write_file("in.md", "nothing\n")
        assert store.grep("OUTSIDE-SECRET") == []
        with pytest.raises(MemoryStorePathError):
            store.grep("x", "out.md")
        with pytest.raises(MemoryStorePathError):
            store.grep("x", "outdir")


class TestWriteFile:
    def test_creates_parents_and_overwrites(self, store: MemoryStore) -> None:
        """Writing creates missing directories; a second write replaces the content."""
        store.write_file("a/b/c.md", "one")
        store.write_file("a/b/c.md", "two")
        assert (store.root / "a" / "b" / "c.md").read_text() == "two"

    def test_size_cap_exact_ok_over_fails_cleanly(self, small: MemoryStore) -> None:
        """Content of exactly max_file_bytes is written; one byte more leaves no file and no record."""
        small.write_file("ok.md", "é" * 5)  # 10 UTF-8 bytes
        with pytest.raises(MemoryStoreSizeLimitError):
            small.write_file("new/big.md", "x" * 11)
        with pytest.raises(MemoryStoreSizeLimitError):
            small.write_file("ok.md", "y" * 11)
        assert small.read_file("ok.md") == "é" * 5
        assert all_names(small.root) == ["ok.md"]
        assert [e.rel_path for e in small.audit_entries] == ["ok.md"]

    @pytest.mark.parametrize("path", ["", ".", "./", "a/.."])
    def test_empty_path(self, store: MemoryStore, path: str) -> None:
        """A path naming no file raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError, match="empty path"):
            store.write_file(path, "x")

    @pytest.mark.parametrize("content", [b"bytes", None, 3, ["x"]])
    def test_non_str_content(self, store: MemoryStore, content: object) -> None:
        """Content that is not a str is refused before touching the disk."""
        with pytest.raises(MemoryStoreError, match="content must be a string"):
            store.write_file("a.md", content)  # type: ignore[arg-type]
        assert all_names(store.root) == []

    def test_lone_surrogate_content(self, store: MemoryStore) -> None:
        """Text that cannot be encoded as UTF-8 raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError):
            store.write_file("a.md", "bad \ud800")

    def test_directory_in_the_way(self, store: MemoryStore) -> None:
        """Writing over a directory, or through a file, raises MemoryStoreError and leaves no temp."""
        store.write_file("dir/a.md", "x")
        with pytest.raises(MemoryStoreError, match="directory"):
            store.write_file("dir", "x")
        with pytest.raises(MemoryStoreError, match="not a directory"):
            store.write_file("dir/a.md/b.md", "x")
        assert temp_files(store.root) == []

    def test_directory_full_refuses_new_entries(self, small: MemoryStore) -> None:
        """A directory holding max_files_per_dir entries refuses new files and dirs, not overwrites."""
        for i in range(4):
            small.write_file(f"f{i}", "x")
        with pytest.raises(MemoryStoreSizeLimitError):
            small.write_file("f4", "x")
        with pytest.raises(MemoryStoreSizeLimitError):
            small.write_file("newdir/a", "x")
        small.write_file("f0", "y")
        assert sorted(os.listdir(small.root)) == ["f0", "f1", "f2", "f3"]

    def test_no_temp_files_after_failures(self, small: MemoryStore) -> None:
        """Failed writes and appends of every kind leave no temp file behind."""
        small.write_file("d/a", "0123456789")
        for call in (
            lambda: small.write_file("d", "x"),
            lambda: small.append_file("d/a", "x"),
            lambda: small.write_file("d/b", "x" * 11),
            lambda: small.write_file("../x", "x"),
        ):
            with pytest.raises(MemoryStoreError):
                call()
        assert temp_files(small.root) == []

    def test_audit_record_per_write(self, store: MemoryStore) -> None:
        """Each write adds a record with path, operation, UTF-8 bytes, source and file hash."""
        store.write_file("a.md", "héllo", source="tool:write_note", context={"author": "alice"})
        (entry,) = store.audit_entries
        assert (entry.rel_path, entry.operation, entry.bytes_written, entry.source) == (
            "a.md",
            "write",
            6,
            "tool:write_note",
        )
        assert entry.timestamp.tzinfo is not None
        assert entry.context == (("author", "alice"),)
        assert entry.sha256 == hashlib.sha256("héllo".encode()).hexdigest()

    def test_canonical_path_recorded(self, store: MemoryStore) -> None:
        """The audit record names the folded path, not the spelling used."""
        store.write_file("./x/../notes//a.md", "x")
        assert store.audit_entries[-1].rel_path == "notes/a.md"

    @pytest.mark.parametrize(
        ("source", "context"),
        [
            ("", None),
            (3, None),
            ("s" * 129, None),
            ("ok", {"k": 3}),
            ("ok", {str(i): "v" for i in range(17)}),
        ],
    )
    def test_bad_source_or_context(
        self, store: MemoryStore, source: object, context: object
    ) -> None:
        """Malformed source or context is refused and nothing is written."""
        with pytest.raises(MemoryStoreError):
            store.write_file("a.md", "x", source=source, context=context)  # type: ignore[arg-type]
        assert all_names(store.root) == []
        assert store.audit_entries == []

    def test_write_through_in_root_symlink_lands_on_target(self, store: MemoryStore) -> None:
        """Writing via an in-root symlink updates its target and keeps the link."""
        store.write_file("real/a.md", "old")
        os.symlink("real/a.md", store.root / "link.md")
        store.write_file("link.md", "new")
        assert (store.root / "link.md").is_symlink()
        assert store.read_file("real/a.md") == "new"
        assert store.audit_entries[-1].rel_path == "real/a.md"

    def test_concurrent_writers(self, store: MemoryStore) -> None:
        """Appends from many threads all land, each audited once, and the log verifies."""

        def worker(n: int) -> None:
            for i in range(5):
                store.append_file("shared.md", f"{n}-{i}\n", source=f"thread:{n}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lines = store.read_file("shared.md").splitlines()
        assert sorted(lines) == sorted(f"{n}-{i}" for n in range(4) for i in range(5))
        assert len(store.audit_entries) == 20
        assert verify_audit(store.audit_path, store.root).ok


class TestAppendFile:
    def test_creates_then_appends(self, store: MemoryStore) -> None:
        """Append creates a missing file (and parents) and then adds to it."""
        store.append_file("log/a.md", "one\n")
        store.append_file("log/a.md", "two\n")
        assert store.read_file("log/a.md") == "one\ntwo\n"

    def test_bytes_written_is_appended_bytes(self, store: MemoryStore) -> None:
        """The audit record counts the appended bytes, not the file size."""
        store.write_file("a.md", "0123456789")
        store.append_file("a.md", "ü")
        entry = store.audit_entries[-1]
        assert (entry.operation, entry.bytes_written) == ("append", 2)
        assert entry.sha256 == hashlib.sha256("0123456789ü".encode()).hexdigest()

    def test_cap_exact_ok_over_leaves_original(self, small: MemoryStore) -> None:
        """An append reaching exactly the cap succeeds; one past it leaves the file untouched."""
        small.write_file("a.md", "12345")
        small.append_file("a.md", "67890")
        with pytest.raises(MemoryStoreSizeLimitError):
            small.append_file("a.md", "x")
        assert small.read_file("a.md") == "1234567890"
        assert len(small.audit_entries) == 2
        assert temp_files(small.root) == []

    def test_non_utf8_existing_file(self, store: MemoryStore) -> None:
        """Appending to a file that is not UTF-8 raises MemoryStoreError and keeps the bytes."""
        (store.root / "bin.md").write_bytes(b"\xff")
        with pytest.raises(MemoryStoreError, match="UTF-8"):
            store.append_file("bin.md", "x")
        assert (store.root / "bin.md").read_bytes() == b"\xff"


class TestDeleteFile:
    def test_deletes_and_audits(self, store: MemoryStore) -> None:
        """delete_file removes the file and appends a delete record with its source."""
        store.write_file("people/discord-1.md", "Alice", source="memory_writer")
        assert store.delete_file("people/discord-1.md", source="user-request") is True
        assert not (store.root / "people" / "discord-1.md").exists()
        entry = store.audit_entries[-1]
        assert (entry.operation, entry.source, entry.bytes_written) == (
            "delete",
            "user-request",
            0,
        )
        assert verify_audit(store.audit_path, store.root).ok

    def test_missing_file_returns_false_without_record(self, store: MemoryStore) -> None:
        """Deleting a file that does not exist changes nothing and records nothing."""
        assert store.delete_file("people/nobody.md", source="user-request") is False
        assert store.audit_entries == []

    def test_refuses_escapes_and_directories(self, store: MemoryStore, outside: Path) -> None:
        """delete_file cannot leave the root and does not remove directories."""
        (outside / "keep.txt").write_text("keep")
        with pytest.raises(MemoryStorePathError):
            store.delete_file("../outside/keep.txt", source="operator")
        store.write_file("people/x.md", "x", source="operator")
        with pytest.raises(MemoryStoreError):
            store.delete_file("people", source="operator")
        assert (outside / "keep.txt").read_text() == "keep"

    def test_listeners_hear_deletion_as_none(self, store: MemoryStore) -> None:
        """Write listeners get content None for a deleted file."""
        seen: list[tuple[str, str | None]] = []
        store.write_file("a.md", "a", source="operator")
        store.add_write_listener(lambda path, content: seen.append((path, content)))
        store.delete_file("a.md", source="operator")
        assert seen == [("a.md", None)]

    def test_recreated_file_after_delete_is_reported(self, store: MemoryStore) -> None:
        """A file put back behind the store's back after a delete fails verification."""
        store.write_file("a.md", "a", source="operator")
        store.delete_file("a.md", source="operator")
        (store.root / "a.md").write_text("back")
        result = verify_audit(store.audit_path, store.root)
        assert not result.ok and "recreated outside the store" in result.problems[0]


class TestWriteListeners:
    def test_called_with_full_content(self, store: MemoryStore) -> None:
        """Listeners get the canonical path and the full new content after writes and appends."""
        calls: list[tuple[str, str]] = []
        store.add_write_listener(lambda path, text: calls.append((path, text)))
        store.write_file("./a.md", "one\n")
        store.append_file("a.md", "two\n")
        assert calls == [("a.md", "one\n"), ("a.md", "one\ntwo\n")]

    def test_not_called_on_failure(self, small: MemoryStore) -> None:
        """A write that fails notifies nobody."""
        calls: list[str] = []
        small.add_write_listener(lambda path, _text: calls.append(path))
        with pytest.raises(MemoryStoreSizeLimitError):
            small.write_file("a.md", "x" * 11)
        assert calls == []

    def test_listener_exception_logged_write_kept(self, store: MemoryStore) -> None:
        """A failing listener is logged (without content) and the write and record stay."""

        def boom(_path: str, _text: str) -> None:
            raise RuntimeError("index down")

        later: list[str] = []
        store.add_write_listener(boom)
        store.add_write_listener(lambda path, _text: later.append(path))
        with capture_logs() as logs:
            store.write_file("a.md", "SECRET-CONTENT")
        assert store.read_file("a.md") == "SECRET-CONTENT"
        assert later == ["a.md"]
        assert len(store.audit_entries) == 1
        failed = [e for e in logs if e["event"] == "memory_write_listener_failed"]
        assert failed and failed[0]["rel_path"] == "a.md"
        assert "SECRET-CONTENT" not in repr(logs)

    def test_non_callable_rejected(self, store: MemoryStore) -> None:
        """Registering something that is not callable raises MemoryStoreError."""
        with pytest.raises(MemoryStoreError):
            store.add_write_listener("nope")  # type: ignore[arg-type]


class TestLogging:
    def test_write_logged_at_debug_without_content(self, store: MemoryStore) -> None:
        """A write is logged at debug with path, bytes and source, never the content."""
        with capture_logs() as logs:
            store.write_file("a.md", "PRIVATE-NOTE", source="operator")
        (event,) = [e for e in logs if e["event"] == "memory_file_written"]
        assert event["log_level"] == "debug"
        assert (event["rel_path"], event["bytes_written"], event["source"]) == (
            "a.md",
            12,
            "operator",
        )
        assert "PRIVATE-NOTE" not in repr(logs)


ESCAPES = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "C:\\x",
    "c:x",
    "C:/x",
    "a\\..\\..\\x",
    "a\x00b",
    "..",
    "./../x",
]


class TestPathSafety:
    @pytest.mark.parametrize("path", ESCAPES)
    def test_escape_forms_rejected_by_every_operation(
        self, store: MemoryStore, base: Path, path: str
    ) -> None:
        """Every escape form raises MemoryStorePathError from every operation and creates nothing."""
        before = all_names(base)
        operations = [
            lambda: store.read_file(path),
            lambda: store.list_dir(path),
            lambda: store.glob(path),
            lambda: store.grep("x", path),
            lambda: store.write_file(path, "x"),
            lambda: store.append_file(path, "x"),
        ]
        for operation in operations:
            with pytest.raises(MemoryStorePathError):
                operation()
        assert all_names(base) == before

    def test_symlink_file_out(self, store: MemoryStore, outside: Path) -> None:
        """A symlink to a file outside the root can be neither read nor written through."""
        os.symlink(outside / "secret.txt", store.root / "s.md")
        with pytest.raises(MemoryStorePathError):
            store.read_file("s.md")
        with pytest.raises(MemoryStorePathError):
            store.write_file("s.md", "pwned")
        with pytest.raises(MemoryStorePathError):
            store.append_file("s.md", "pwned")
        assert (outside / "secret.txt").read_text() == "OUTSIDE-SECRET\n"

    def test_symlink_dir_out(self, store: MemoryStore, outside: Path) -> None:
        """A symlinked directory leading outside cannot be listed, read or written through."""
        os.symlink(outside, store.root / "d")
        os.symlink("../../outside", store.root / "rel")
        for link in ("d", "rel"):
            with pytest.raises(MemoryStorePathError):
                store.list_dir(link)
            with pytest.raises(MemoryStorePathError):
                store.read_file(f"{link}/secret.txt")
            with pytest.raises(MemoryStorePathError):
                store.write_file(f"{link}/new.md", "pwned")
            assert store.glob(f"{link}/*") == []
            assert store.glob(f"{link}/secret.txt") == []
        assert sorted(os.listdir(outside)) == ["secret.txt"]

    def test_absolute_symlink_into_root_allowed(self, store: MemoryStore) -> None:
        """An absolute symlink whose target is inside the root is followed."""
        store.write_file("t.md", "T")
        os.symlink(store.root / "t.md", store.root / "abs.md")
        assert store.read_file("abs.md") == "T"

    def test_symlink_loop(self, store: MemoryStore) -> None:
        """A symlink loop raises MemoryStorePathError instead of spinning."""
        os.symlink("loop", store.root / "loop")
        with pytest.raises(MemoryStorePathError):
            store.read_file("loop")
        assert store.list_dir() == []


class TestIterNotes:
    def test_yields_every_note_beyond_the_results_cap(self, base: Path) -> None:
        """iter_notes is not capped like glob: every .md file is yielded with its content."""
        limits = MemoryStoreLimits(max_file_bytes=1024, max_results_per_op=3, max_files_per_dir=100)
        store = MemoryStore(base / "notes", limits=limits)
        for i in range(10):
            store.write_file(f"people/p{i}.md", f"note {i}", source="test")
        store.write_file("people/skip.txt", "not a note", source="test")
        notes = dict(store.iter_notes())
        assert len(store.glob("**/*.md")) == 3
        assert len(notes) == 10 and notes["people/p7.md"] == "note 7"

    def test_skips_symlinks_and_oversized_files(self, base: Path, outside: Path) -> None:
        """Symlinks (even to notes) and files over the cap are never read."""
        store = MemoryStore(base / "notes", limits=MemoryStoreLimits(max_file_bytes=16))
        store.write_file("ok.md", "fine", source="test")
        (store.root / "big.md").write_text("x" * 100)
        (outside / "evil.md").write_text("outside")
        os.symlink(outside / "evil.md", store.root / "link.md")
        assert dict(store.iter_notes()) == {"ok.md": "fine"}
