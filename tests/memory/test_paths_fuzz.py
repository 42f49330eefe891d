"""Path-jail fuzzing: hostile paths and symlinks never let an operation touch anything outside the root.

The property test runs 200 examples by default; set ``FAMILIAR_FUZZ=1`` for 10,000.
A fixed corpus of known traversal payloads always runs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from familiar_connect.memory import _paths
from familiar_connect.memory.store import (
    MemoryStore,
    MemoryStoreError,
    MemoryStorePathError,
)

FUZZ = os.environ.get("FAMILIAR_FUZZ") == "1"
MAX_EXAMPLES = 10_000 if FUZZ else 200
SECRET = "OUTSIDE-SECRET"
# Deeper than the longest token list can climb, so even a broken jail stays in tmp_path.
ROOT_DEPTH = 14

TOKENS = [
    "..",
    ".",
    "/",
    "\\",
    "\x00",
    "C:",
    "c:",
    "\u2024\u2024",
    "\uff0e\uff0e",
    "\u2215",
    "%2e%2e",
    "a",
    "b.md",
    "sub",
    "link_file_out",
    "link_dir_out",
    "link_rel_out",
    "link_in",
    "link_abs_in",
    "link_loop",
    "n" * 260,
    "é",
    "*",
    "**",
    "~",
    " ",
    "\r\n",
    ".x.tmp-0123456789abcdef",
]

CORPUS = [
    "../x",
    "../../etc/passwd",
    "a/../../x",
    "./../x",
    "..",
    "../",
    "/..",
    "/etc/passwd",
    "//etc/passwd",
    "/",
    "C:\\Windows\\win.ini",
    "c:x",
    "C:",
    "C:/x",
    "\\\\server\\share\\x",
    "a\\..\\..\\x",
    "..\\x",
    "a\x00b",
    "\x00",
    "x.md\x00.txt",
    "....//....//x",
    "..././x",
    ".../x",
    "%2e%2e/x",
    "..%2fx",
    "\u2024\u2024/x",
    "\uff0e\uff0e/x",
    "..\u2215x",
    "a/./../b",
    "link_file_out",
    "link_dir_out/secret.txt",
    "link_rel_out/new.md",
    "link_loop/x",
    "sub/../../x",
    "n" * 300,
]

# Payloads naming somewhere outside the root: refused as escapes by every operation
# (glob alone drops symlink escapes from its results instead of raising).
LEXICAL_ESCAPES = [
    "../x",
    "../../etc/passwd",
    "a/../../x",
    "./../x",
    "..",
    "../",
    "/..",
    "/etc/passwd",
    "//etc/passwd",
    "/",
    "C:\\Windows\\win.ini",
    "c:x",
    "C:",
    "C:/x",
    "\\\\server\\share\\x",
    "a\\..\\..\\x",
    "..\\x",
    "a\x00b",
    "\x00",
    "x.md\x00.txt",
    "sub/../../x",
]
SYMLINK_ESCAPES = ["link_file_out", "link_dir_out/secret.txt", "link_rel_out/new.md"]

OPERATIONS = ["read", "list", "glob", "grep", "write", "append"]


@dataclass
class World:
    """A memory root with hostile symlinks, next to an 'outside' directory holding a secret."""

    base: Path
    root: Path
    outside: Path
    store: MemoryStore

    def snapshot(self) -> dict[str, object]:
        """Everything under base except the memory root and the audit log."""
        seen: dict[str, object] = {}
        for dirpath, dirnames, filenames in os.walk(self.base, followlinks=False):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                path = here / name
                if path == self.store.audit_path or path == self.root:
                    continue
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    seen[str(path)] = ("link", os.readlink(path))
                elif stat.S_ISREG(mode):
                    seen[str(path)] = ("file", path.read_bytes())
                else:
                    seen[str(path)] = ("dir", None)
        return seen


def build_world(base: Path) -> World:
    """Lay out root, outside and symlinks of every kind."""
    deep = base.joinpath(*[f"d{i}" for i in range(ROOT_DEPTH)])
    root = deep / "root"
    outside = deep / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET + "\n")
    store = MemoryStore(root)
    store.write_file("sub/note.md", "inside note\n")
    store.write_file("b.md", "bee\n")
    os.symlink(outside / "secret.txt", root / "link_file_out")
    os.symlink(outside, root / "link_dir_out")
    os.symlink("../outside", root / "link_rel_out")
    os.symlink("sub", root / "link_in")
    os.symlink(root / "b.md", root / "link_abs_in")
    os.symlink("link_loop", root / "link_loop")
    os.symlink("../../outside", root / "sub" / "deep_out")
    return World(base, root, outside, store)


@pytest.fixture(name="world")
def fixture_world(tmp_path: Path) -> World:
    return build_world(tmp_path)


def run_op(world: World, op: str, path: str) -> object:
    """Run one store operation on a possibly hostile path."""
    store = world.store
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: store.read_file(path),
        "list": lambda: store.list_dir(path),
        "glob": lambda: store.glob(path),
        "grep": lambda: store.grep("SECRET|note|bee", path),
        "write": lambda: store.write_file(path, "fuzz\n", source="fuzz"),
        "append": lambda: store.append_file(path, "fuzz\n", source="fuzz"),
    }
    return calls[op]()


def inside(root: Path, rel_path: str) -> bool:
    """Whether a relative path resolves (following symlinks) inside the root."""
    return (root / rel_path).resolve().is_relative_to(root)


def check_jailed(world: World, op: str, path: str) -> None:
    """Run the op; it must stay inside the root or raise a MemoryStoreError, and change nothing outside."""
    before = world.snapshot()
    records_before = len(world.store.audit_entries)
    try:
        result = run_op(world, op, path)
    except MemoryStoreError:
        result = None
    assert world.snapshot() == before, f"{op} {path!r} changed something outside the root"
    assert SECRET not in repr(result), f"{op} {path!r} leaked outside content"
    if op == "glob" and result is not None:
        assert all(inside(world.root, p) for p in result)  # type: ignore[union-attr]
    if op == "grep" and result is not None:
        assert all(inside(world.root, h.rel_path) for h in result)  # type: ignore[union-attr]
    entries = world.store.audit_entries
    if len(entries) > records_before:
        written = entries[-1].rel_path
        assert inside(world.root, written)
        assert (world.root / written).read_text().endswith("fuzz\n")


def hostile_paths() -> st.SearchStrategy[str]:
    tokens = st.lists(st.sampled_from(TOKENS), max_size=12).map("".join)
    return st.one_of(tokens, st.text(max_size=30))


class TestTraversalCorpus:
    @pytest.mark.parametrize("path", CORPUS)
    def test_corpus_stays_jailed(self, world: World, path: str) -> None:
        """Each known traversal payload either stays inside the root or raises, touching nothing outside."""
        for op in OPERATIONS:
            check_jailed(world, op, path)

    @pytest.mark.parametrize("path", LEXICAL_ESCAPES)
    def test_lexical_escapes_raise_path_error(self, world: World, path: str) -> None:
        """Escaping spellings raise MemoryStorePathError from every operation."""
        for op in OPERATIONS:
            with pytest.raises(MemoryStorePathError):
                run_op(world, op, path)

    @pytest.mark.parametrize("path", SYMLINK_ESCAPES)
    def test_symlink_escapes(self, world: World, path: str) -> None:
        """Paths through outward symlinks raise MemoryStorePathError, and glob finds nothing there."""
        for op in OPERATIONS:
            if op == "glob":
                assert run_op(world, op, path) == []
                continue
            with pytest.raises(MemoryStorePathError):
                run_op(world, op, path)

    def test_corpus_is_large_enough(self) -> None:
        """The fixed corpus keeps at least thirty payloads and covers every listed escape."""
        assert len(CORPUS) >= 30
        assert set(LEXICAL_ESCAPES + SYMLINK_ESCAPES) <= set(CORPUS)


class TestHostilePathProperty:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(path=hostile_paths(), op=st.sampled_from(OPERATIONS))
    def test_every_operation_stays_jailed(self, world: World, path: str, op: str) -> None:
        """Any path built from hostile segments stays inside the root or raises a store error."""
        check_jailed(world, op, path)

    @settings(
        max_examples=MAX_EXAMPLES // 4,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(path=hostile_paths())
    def test_normalized_parts_never_climb(self, path: str) -> None:
        """normalize_rel_path returns only plain names (no '', '.', '..', '/', NUL) or raises."""
        try:
            parts = _paths.normalize_rel_path(path)
        except MemoryStoreError:
            return
        for part in parts:
            assert part not in ("", ".", "..")
            assert "/" not in part and "\x00" not in part and "\\" not in part


def swap_after_lstat(monkeypatch: pytest.MonkeyPatch, name: str, swap: Callable[[], None]) -> None:
    """Run ``swap`` right after the store's first lstat of ``name``: the race, on demand."""
    real_stat = os.stat
    fired = False

    def racing_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        nonlocal fired
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if not fired and path == name and kwargs.get("follow_symlinks") is False:
            fired = True
            swap()
        return result

    monkeypatch.setattr(os, "stat", racing_stat)


class TestSymlinkSwapRace:
    def test_directory_swapped_before_open(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A directory replaced by an outward symlink after its check makes the write fail, not escape."""
        (world.root / "victim").mkdir()

        def swap() -> None:
            os.rename(world.root / "victim", world.root / "victim_real")
            os.symlink(world.outside, world.root / "victim")

        swap_after_lstat(monkeypatch, "victim", swap)
        with pytest.raises(MemoryStorePathError):
            world.store.write_file("victim/x.md", "pwned")
        assert sorted(os.listdir(world.outside)) == ["secret.txt"]

    @pytest.fixture(name="swapped_file")
    def fixture_swapped_file(self, world: World, monkeypatch: pytest.MonkeyPatch) -> World:
        world.store.write_file("f.md", "inside\n")

        def swap() -> None:
            os.unlink(world.root / "f.md")
            os.symlink(world.outside / "secret.txt", world.root / "f.md")

        swap_after_lstat(monkeypatch, "f.md", swap)
        return world

    def test_file_swapped_before_read(self, swapped_file: World) -> None:
        """A file replaced by an outward symlink after its check cannot be read through."""
        with pytest.raises(MemoryStorePathError):
            swapped_file.store.read_file("f.md")

    def test_file_swapped_before_append(self, swapped_file: World) -> None:
        """An append whose file became an outward symlink fails and the outside file is untouched."""
        with pytest.raises(MemoryStorePathError):
            swapped_file.store.append_file("f.md", "pwned")
        assert (swapped_file.outside / "secret.txt").read_text() == SECRET + "\n"

    def test_file_swapped_before_write(self, swapped_file: World) -> None:
        """A write over a swapped-in symlink replaces the link itself, never its outside target."""
        swapped_file.store.write_file("f.md", "new\n")
        assert (swapped_file.outside / "secret.txt").read_text() == SECRET + "\n"
        assert not (swapped_file.root / "f.md").is_symlink()
        assert swapped_file.store.read_file("f.md") == "new\n"


class TestNoFollowPrimitives:
    def test_read_bytes_refuses_symlink(self, world: World) -> None:
        """read_bytes opens with O_NOFOLLOW, so a symlink name is refused even when it points inside."""
        fd = os.open(world.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(MemoryStorePathError):
                _paths.read_bytes(fd, "link_abs_in", "link_abs_in", max_bytes=100)
        finally:
            os.close(fd)

    def test_temp_names_reserved(self) -> None:
        """Names shaped like the store's temp files are refused so the start-up sweep never eats notes."""
        name = _paths.make_temp_name("n" * 300)
        assert _paths.is_temp_name(name)
        assert len(name.encode()) <= _paths.MAX_NAME_BYTES
        with pytest.raises(MemoryStoreError):
            _paths.normalize_rel_path(f"a/{name}")
