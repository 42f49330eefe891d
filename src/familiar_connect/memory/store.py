"""MemoryStore: the familiar's notes directory, path-jailed, capped, atomic and audited.

This is the only way the model touches the filesystem. Every path is checked
by :mod:`familiar_connect.memory._paths` (lexical rules, then a walk that
opens each directory with ``O_NOFOLLOW`` relative to its parent's fd), so
neither ``..``, absolute or drive paths, NUL bytes nor symlinks can lead out
of the root, even if a symlink is swapped in between a check and a use.

Symlinks inside the root are followed when their target, resolved and
re-checked, stays inside the root; those leading out raise
:class:`MemoryStorePathError` when named, and are silently dropped from
``list_dir``, ``glob`` and ``grep`` results. Recursive walks (``glob``,
``grep`` over a directory) never descend through symlinked directories.

Writes go to a temp file ``.<name>.tmp-<hex>`` in the target's directory and
are fsynced; then the change's hash-chained record is appended to the audit log
(:mod:`familiar_connect.memory.audit`); then the temp file is renamed over the
target with ``os.replace`` and the directory is fsynced. The audit log is the
write-ahead log: a crash before the record leaves a temp file that the next
open sweeps away (the old content stands, and no record claims otherwise); a
crash after it is finished by the next open, which renames the temp file whose
SHA-256 the newest record names. Deletes are recorded before the unlink and
finished the same way. So a reader or a crash sees the old or the new content,
never a mix, and ``familiar memory verify`` passes after any crash.

Paths in results, audit records and write listeners are canonical: POSIX,
relative to the root, with ``.``/``..`` folded (and, for writes, in-root
symlinks resolved).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import structlog

from familiar_connect.errors import (
    AuditLogError,
    ConfigError,
    MemoryStoreError,
    MemoryStorePathError,
    MemoryStoreSizeLimitError,
)
from familiar_connect.memory._paths import (
    Located,
    commit_temp,
    count_entries,
    discard_temp,
    glob_could_match_under,
    glob_match,
    is_temp_name,
    iter_tree,
    locate,
    make_temp_name,
    normalize_glob,
    normalize_rel_path,
    read_bytes,
    scan_dir,
    write_temp,
)
from familiar_connect.memory.audit import (
    DELETED_SHA256,
    AuditEntry,
    AuditLog,
    Operation,
    quarantine_torn_tail,
)

__all__ = [
    "AuditEntry",
    "GrepHit",
    "MemoryEntry",
    "MemoryStore",
    "MemoryStoreError",
    "MemoryStoreLimits",
    "MemoryStorePathError",
    "MemoryStoreSizeLimitError",
    "WriteListener",
]

log = structlog.get_logger(__name__)

WriteListener = Callable[[str, str | None], None]
"""Called as ``listener(rel_path, full_new_content)`` after each successful write."""

_MAX_PATTERN_CHARS = 1000
_MAX_SOURCE_CHARS = 128
_MAX_CONTEXT_ITEMS = 16
_MAX_CONTEXT_KEY_CHARS = 64
_MAX_CONTEXT_VALUE_CHARS = 512
_MAGIC = frozenset("*?[")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class MemoryStoreLimits:
    """Caps the store enforces whatever the caller asks.

    Attributes:
        max_file_bytes: largest file, in bytes, that may be read or result from
            a write or append (exactly this size is allowed).
        max_results_per_op: most paths ``glob`` or hits ``grep`` return.
        max_files_per_dir: most entries ``list_dir`` will list, and the count at
            which a directory refuses new entries.
    """

    max_file_bytes: int = 256 * 1024
    max_results_per_op: int = 1000
    max_files_per_dir: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_results_per_op", "max_files_per_dir"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MemoryStoreLimits.{name} must be a positive integer")


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One entry of a directory listing.

    Attributes:
        name: the entry's name in its directory.
        is_dir: whether it is a directory (in-root symlinks report their target).
        size_bytes: file size in bytes; 0 for directories.
        modified: last modification, an aware UTC datetime.
    """

    name: str
    is_dir: bool
    size_bytes: int
    modified: datetime


@dataclass(frozen=True, slots=True)
class GrepHit:
    """The first match of a pattern in one line.

    Attributes:
        rel_path: the file, relative to the root.
        line_number: 1-based line number (lines end at ``\\n``; a trailing ``\\r`` is dropped).
        line_text: the whole line, without its line ending.
        match_start: character offset of the match in ``line_text``.
        match_end: character offset just past the match.
    """

    rel_path: str
    line_number: int
    line_text: str
    match_start: int
    match_end: int


def _modified(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)


class MemoryStore:
    """A directory of notes the model may read and write, and nothing outside it.

    Thread-safety: every method may be called from any thread. Writes and
    appends (and their audit records and listener calls) are serialised by
    one internal re-entrant lock; reads take no lock and see each file either
    before or after any concurrent write. One process owns a store's root.

    Args:
        root: the memory directory; created (with parents) if missing.
        limits: caps; :class:`MemoryStoreLimits` defaults when ``None``.
        audit_path: the audit log; must be outside ``root``. Defaults to
            ``<root's parent>/<root's name>.audit.jsonl``.

    Raises:
        MemoryStoreError: the root cannot be created, or the audit log would
            live inside it.
        AuditLogError: an existing audit log cannot be read.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        limits: MemoryStoreLimits | None = None,
        audit_path: str | os.PathLike[str] | None = None,
    ) -> None:
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            self.root: Path = Path(root).resolve(strict=True)
        except OSError as exc:
            raise MemoryStoreError(f"cannot create the memory root: {exc.strerror}") from exc
        if not self.root.is_dir():
            raise MemoryStoreError("the memory root is not a directory")
        self.limits: MemoryStoreLimits = limits or MemoryStoreLimits()
        if audit_path is None:
            audit_path = self.root.parent / f"{self.root.name}.audit.jsonl"
        resolved_audit = Path(audit_path).resolve()
        if resolved_audit == self.root or resolved_audit.is_relative_to(self.root):
            raise MemoryStoreError("the audit log must live outside the memory root")
        try:
            resolved_audit.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemoryStoreError(f"cannot create the audit directory: {exc.strerror}") from exc
        self._root_posix = PurePosixPath(self.root.as_posix())
        self._lock = threading.RLock()
        self._listeners: list[WriteListener] = []
        # We are the only writer: a record torn by a crash is moved aside first.
        quarantine_torn_tail(resolved_audit)
        self._audit = AuditLog(resolved_audit)
        self._finish_last_operation()
        self._remove_stale_temp_files()

    @property
    def audit_path(self) -> Path:
        """Where the audit log lives."""
        return self._audit.path

    @property
    def audit_entries(self) -> list[AuditEntry]:
        """A copy of the audit records, oldest first, including those loaded at start."""
        return self._audit.entries()

    def add_write_listener(self, callback: WriteListener) -> None:
        """Register ``callback(rel_path, full_new_content)`` to run after each successful write.

        Listeners run on the writing thread, in write order, while the store's
        write lock is held, so they must be quick. An exception from a listener
        is logged and swallowed: the write stays done.
        """
        if not callable(callback):
            raise MemoryStoreError("a write listener must be callable")
        with self._lock:
            self._listeners.append(callback)

    # -- reads ---------------------------------------------------------------

    def list_dir(self, rel_path: str = "") -> list[MemoryEntry]:
        """List a directory's entries, sorted by name.

        Symlinks whose target lies outside the root (or is missing), special
        files and the store's temp files are left out.

        Raises:
            MemoryStorePathError: the path leaves the root.
            MemoryStoreError: not found, or not a directory.
            MemoryStoreSizeLimitError: the directory holds more than
                ``max_files_per_dir`` entries.
        """
        parts = normalize_rel_path(rel_path)
        with self._open_dir(parts) as (dir_fd, canonical):
            try:
                scanned = scan_dir(dir_fd, limit=self.limits.max_files_per_dir)
            except OSError as exc:
                raise MemoryStoreError(f"cannot list {rel_path!r}: {exc.strerror}") from exc
        if len(scanned) > self.limits.max_files_per_dir:
            raise MemoryStoreSizeLimitError(
                f"{rel_path or '.'!r} holds more than {self.limits.max_files_per_dir} entries, "
                "the listing cap"
            )
        entries: list[MemoryEntry] = []
        for name, st in scanned:
            if stat.S_ISLNK(st.st_mode):
                target = self._stat_in_root((*canonical, name))
                if target is None:
                    continue
                st = target
            if stat.S_ISDIR(st.st_mode):
                entries.append(MemoryEntry(name, True, 0, _modified(st)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(MemoryEntry(name, False, st.st_size, _modified(st)))
        entries.sort(key=lambda entry: entry.name)
        return entries

    def read_file(self, rel_path: str) -> str:
        """Return a file's text.

        Raises:
            MemoryStorePathError: the path leaves the root.
            MemoryStoreSizeLimitError: the file is over ``max_file_bytes``.
            MemoryStoreError: not found, a directory, not a regular file, or
                not valid UTF-8.
        """
        parts = normalize_rel_path(rel_path)
        if not parts:
            raise MemoryStoreError("is a directory: the memory root")
        loc = locate(self._root_posix, parts)
        try:
            data = self._read_located(loc)
        finally:
            os.close(loc.parent_fd)
        return self._decode(data, loc.rel_path)

    def glob(self, pattern: str) -> list[str]:
        """Return paths matching a glob pattern, sorted, at most ``max_results_per_op``.

        ``*``, ``?`` and ``[...]`` match within one name (case-sensitively,
        dot-files included); ``**`` matches zero or more directories. Matches
        may be files or directories. Symlinks leading out of the root (also as
        part of the pattern's literal prefix) are dropped, not reported.

        Raises:
            MemoryStorePathError: the pattern is absolute, has a drive,
                backslash or NUL, or its ``..`` leaves the root.
            MemoryStoreError: the pattern is not a string or is malformed.
        """
        segments = normalize_glob(pattern)
        collapsed: list[str] = []
        for segment in segments:
            if not (segment == "**" and collapsed and collapsed[-1] == "**"):
                collapsed.append(segment)
        split = next((i for i, s in enumerate(collapsed) if _MAGIC & set(s)), len(collapsed))
        prefix, rest = tuple(collapsed[:split]), tuple(collapsed[split:])
        if not prefix and not rest:
            return []
        if not rest:
            return ["/".join(prefix)] if self._stat_in_root(prefix) is not None else []
        cap = self.limits.max_results_per_op
        results: list[str] = []
        truncated = False
        with contextlib.ExitStack() as stack:
            try:
                dir_fd, _ = stack.enter_context(self._open_dir(prefix))
            except MemoryStoreError:
                # A missing, non-directory or symlinked-out prefix matches nothing;
                # lexical escapes were already refused by normalize_glob.
                return []
            walk = iter_tree(dir_fd, (), descend=lambda p: glob_could_match_under(rest, p))
            with contextlib.closing(walk):
                for _fd, _name, sub_parts, st in walk:
                    if not glob_match(rest, sub_parts):
                        continue
                    full = (*prefix, *sub_parts)
                    if stat.S_ISLNK(st.st_mode) and self._stat_in_root(full) is None:
                        continue
                    bisect.insort(results, "/".join(full))
                    if len(results) > cap:
                        results.pop()
                        truncated = True
        if truncated:
            log.info("memory_results_truncated", operation="glob", max_results=cap)
        return results

    def iter_notes(self, *, suffix: str = ".md") -> Iterator[tuple[str, str]]:
        """Yield ``(rel_path, content)`` for every regular ``suffix`` file, in path order.

        For the program itself (rebuilding the search index at start), not for the
        model: unlike :meth:`glob` it is not capped at ``max_results_per_op``, but it
        still never follows a symlink, skips files over ``max_file_bytes`` and files
        that are not UTF-8 (logged), and reads one file at a time.
        """
        with self._open_dir(()) as (root_fd, _):
            walk = iter_tree(root_fd, (), descend=lambda _parts: True)
            with contextlib.closing(walk):
                for dir_fd, name, parts, st in walk:
                    if not stat.S_ISREG(st.st_mode) or not name.endswith(suffix):
                        continue
                    rel_path = "/".join(parts)
                    if st.st_size > self.limits.max_file_bytes:
                        log.warning("memory_note_skipped_too_large", rel_path=rel_path)
                        continue
                    try:
                        data = read_bytes(
                            dir_fd, name, rel_path, max_bytes=self.limits.max_file_bytes
                        )
                        yield rel_path, data.decode("utf-8")
                    except (MemoryStoreError, UnicodeDecodeError):
                        log.warning("memory_note_skipped_unreadable", rel_path=rel_path)

    def grep(
        self, pattern: str, rel_path: str = "", *, case_insensitive: bool = True
    ) -> list[GrepHit]:
        """Search UTF-8 files for a regular expression, one hit per matching line.

        ``rel_path`` may name a file or a directory (searched recursively,
        regular files only, no symlinks followed). Hits come in path order,
        then line order, at most ``max_results_per_op``. Files over
        ``max_file_bytes`` or not valid UTF-8 are skipped. An empty pattern
        returns no hits.

        Raises:
            MemoryStorePathError: the path leaves the root.
            MemoryStoreError: invalid or over-long pattern, not found, or not a
                regular file or directory.
        """
        if not isinstance(pattern, str):
            raise MemoryStoreError("a grep pattern must be a string")
        if len(pattern) > _MAX_PATTERN_CHARS:
            raise MemoryStoreError(f"grep pattern is longer than {_MAX_PATTERN_CHARS} characters")
        parts = normalize_rel_path(rel_path)
        if pattern == "":
            return []
        try:
            regex = re.compile(pattern, re.IGNORECASE if case_insensitive else 0)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise MemoryStoreError(f"invalid grep pattern: {exc}") from exc
        cap = self.limits.max_results_per_op
        hits: list[GrepHit] = []
        loc = locate(self._root_posix, parts)
        try:
            if loc.name is not None and loc.st is None:
                raise MemoryStoreError(f"not found: {rel_path!r} does not exist")
            if loc.name is not None and loc.st is not None and stat.S_ISREG(loc.st.st_mode):
                self._grep_file(loc.parent_fd, loc.name, "/".join(parts), regex, hits)
                return hits[:cap]
        finally:
            os.close(loc.parent_fd)
        with self._open_dir(parts) as (dir_fd, _):
            walk = iter_tree(dir_fd, parts, descend=lambda _p: True)
            with contextlib.closing(walk):
                for fd, name, file_parts, st in walk:
                    if stat.S_ISREG(st.st_mode):
                        self._grep_file(fd, name, "/".join(file_parts), regex, hits)
                    if len(hits) >= cap:
                        break
        if len(hits) > cap:
            log.info("memory_results_truncated", operation="grep", max_results=cap)
        return hits[:cap]

    # -- writes --------------------------------------------------------------

    def write_file(
        self,
        rel_path: str,
        content: str,
        *,
        source: str = "unknown",
        context: Mapping[str, str] | None = None,
    ) -> None:
        """Replace (or create) a file atomically and record it in the audit log.

        Missing parent directories inside the root are created. On failure no
        file is left and no record is written.

        Args:
            rel_path: the file, relative to the root.
            content: the new text (stored as UTF-8).
            source: who writes, e.g. ``"memory_writer"`` or ``"tool:write_note"``.
            context: optional string pairs for the audit record (conversation, author).

        Raises:
            MemoryStorePathError: the path leaves the root.
            MemoryStoreSizeLimitError: the content is over ``max_file_bytes``, or
                the directory already holds ``max_files_per_dir`` entries.
            MemoryStoreError: empty path, a directory in the way, non-str
                content, or an OS failure.
            AuditLogError: its record could not be appended; the file is unchanged.
        """
        self._write(rel_path, content, operation="write", source=source, context=context)

    def append_file(
        self,
        rel_path: str,
        content: str,
        *,
        source: str = "unknown",
        context: Mapping[str, str] | None = None,
    ) -> None:
        """Append text to a file (creating it if absent), atomically, and audit it.

        The whole new file is written to a temp file and renamed into place, so
        a crash leaves the old or the new content. An append that would take the
        file over ``max_file_bytes`` leaves it untouched.

        Args and Raises: as :meth:`write_file`; also ``MemoryStoreError`` when
        the existing file is not valid UTF-8.
        """
        self._write(rel_path, content, operation="append", source=source, context=context)

    def delete_file(
        self,
        rel_path: str,
        *,
        source: str = "unknown",
        context: Mapping[str, str] | None = None,
    ) -> bool:
        """Delete a file and record it in the audit log; return False if it did not exist.

        Used for privacy requests ("delete my data") and by the operator; the
        model's tools never delete. Listeners are told with ``content=None``.

        Raises:
            MemoryStorePathError: the path leaves the root.
            MemoryStoreError: empty path, a directory, or an OS failure.
            AuditLogError: its record could not be appended; the file is still there.
        """
        _check_source(source)
        pairs = _check_context(context)
        parts = normalize_rel_path(rel_path)
        if not parts:
            raise MemoryStoreError("empty path: name a file to delete")
        with self._lock:
            try:
                loc = locate(self._root_posix, parts)
            except MemoryStorePathError:
                raise
            except MemoryStoreError:
                if self._stat_in_root(parts) is None:
                    return False  # a parent directory is missing: nothing to delete
                raise
            try:
                if loc.st is None:
                    return False
                if loc.name is None or not stat.S_ISREG(loc.st.st_mode):
                    raise MemoryStoreError(f"not a regular file: {loc.rel_path!r}")
                canonical = loc.rel_path
                # Write-ahead, as for writes: the record first, then the unlink; a crash
                # in between is finished on open (_finish_last_operation).
                try:
                    self._audit.append(
                        rel_path=canonical,
                        operation="delete",
                        bytes_written=0,
                        source=source,
                        sha256=DELETED_SHA256,
                        context=pairs,
                    )
                except AuditLogError:
                    log.error("memory_audit_append_failed", rel_path=canonical, operation="delete")
                    raise
                try:
                    os.unlink(loc.name, dir_fd=loc.parent_fd)
                except OSError as exc:
                    self._record_unchanged(loc, canonical, source)
                    raise MemoryStoreError(f"cannot delete {canonical!r}: {exc.strerror}") from exc
                with contextlib.suppress(OSError):
                    os.fsync(loc.parent_fd)
            finally:
                os.close(loc.parent_fd)
            log.debug("memory_file_deleted", rel_path=canonical, source=source)
            self._notify(canonical, None)
            return True

    # -- internals -----------------------------------------------------------

    @contextlib.contextmanager
    def _open_dir(self, parts: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, ...]]]:
        """Yield ``(dir_fd, canonical_parts)`` for a directory inside the root."""
        loc = locate(self._root_posix, parts)
        fd = loc.parent_fd
        try:
            if loc.name is not None:
                if loc.st is None:
                    raise MemoryStoreError(f"not found: {'/'.join(parts)!r} does not exist")
                if not stat.S_ISDIR(loc.st.st_mode):
                    raise MemoryStoreError(f"not a directory: {'/'.join(parts)!r}")
                try:
                    child = os.open(loc.name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise MemoryStorePathError(
                        f"{'/'.join(parts)!r} changed while it was opened"
                    ) from exc
                os.close(fd)
                fd = child
            yield fd, loc.parts
        finally:
            os.close(fd)

    def _stat_in_root(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """Return the stat of what ``parts`` leads to, or ``None`` if it escapes or is missing."""
        try:
            loc = locate(self._root_posix, parts)
        except MemoryStoreError:
            return None
        os.close(loc.parent_fd)
        return loc.st

    def _read_located(self, loc: Located) -> bytes:
        if loc.name is None or (loc.st is not None and stat.S_ISDIR(loc.st.st_mode)):
            raise MemoryStoreError(f"is a directory: {loc.rel_path!r}")
        if loc.st is None:
            raise MemoryStoreError(f"not found: {loc.rel_path!r} does not exist")
        return read_bytes(
            loc.parent_fd, loc.name, loc.rel_path, max_bytes=self.limits.max_file_bytes
        )

    @staticmethod
    def _decode(data: bytes, rel_path: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MemoryStoreError(f"{rel_path!r} is not valid UTF-8 text") from exc

    def _grep_file(
        self, dir_fd: int, name: str, rel_path: str, regex: re.Pattern[str], hits: list[GrepHit]
    ) -> None:
        try:
            text = read_bytes(dir_fd, name, rel_path, max_bytes=self.limits.max_file_bytes).decode(
                "utf-8"
            )
        except (MemoryStoreError, UnicodeDecodeError):
            log.debug("memory_grep_file_skipped", rel_path=rel_path)
            return
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the text after a final newline is not a line
        for number, line in enumerate(lines, start=1):
            if line.endswith("\r"):
                line = line[:-1]
            match = regex.search(line)
            if match is None:
                continue
            hits.append(GrepHit(rel_path, number, line, match.start(), match.end()))
            if len(hits) > self.limits.max_results_per_op:
                return

    def _write(
        self,
        rel_path: str,
        content: str,
        *,
        operation: Operation,
        source: str,
        context: Mapping[str, str] | None,
    ) -> None:
        if not isinstance(content, str):
            raise MemoryStoreError(f"content must be a string, not {type(content).__name__}")
        _check_source(source)
        pairs = _check_context(context)
        parts = normalize_rel_path(rel_path)
        if not parts:
            raise MemoryStoreError("empty path: name a file to write")
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MemoryStoreError("content is not valid Unicode text") from exc
        cap = self.limits.max_file_bytes
        # Checked before any directory is created, so a refused write leaves nothing.
        if len(data) > cap:
            raise MemoryStoreSizeLimitError(
                f"writing {len(data)} bytes would exceed the {cap}-byte file cap"
            )
        with self._lock:
            loc = locate(
                self._root_posix,
                parts,
                create_dirs=True,
                max_entries_per_dir=self.limits.max_files_per_dir,
            )
            try:
                name, full_text, new_data = self._prepare(loc, content, data, operation)
                # Write-ahead: the new content is durable in a temp file, then its record
                # is appended, then the temp file is renamed into place. A crash before
                # the record leaves only a temp file (swept on open: the old content
                # stands); a crash after it is finished on open (_finish_last_operation).
                tmp = write_temp(loc.parent_fd, name, new_data, loc.rel_path)
                canonical = loc.rel_path
                try:
                    self._audit.append(
                        rel_path=canonical,
                        operation=operation,
                        bytes_written=len(data),
                        source=source,
                        sha256=hashlib.sha256(new_data).hexdigest(),
                        context=pairs,
                    )
                except AuditLogError:
                    discard_temp(loc.parent_fd, tmp)
                    log.error("memory_audit_append_failed", rel_path=canonical, operation=operation)
                    raise
                try:
                    commit_temp(loc.parent_fd, tmp, name, canonical)
                except MemoryStoreError:
                    self._record_unchanged(loc, canonical, source)
                    raise
            finally:
                os.close(loc.parent_fd)
            log.debug(
                "memory_file_written",
                rel_path=canonical,
                operation=operation,
                bytes_written=len(data),
                source=source,
            )
            self._notify(canonical, full_text)

    def _record_unchanged(self, loc: Located, rel_path: str, source: str) -> None:
        """Append a record restoring the file's real state after a recorded change failed.

        Keeps the chain describing the disk when a rename or unlink fails after its
        record was appended (an OS error, not a crash: a crash is finished on open).
        """
        try:
            if loc.name is None or loc.st is None:
                sha, operation = DELETED_SHA256, "delete"
            else:
                old = read_bytes(
                    loc.parent_fd, loc.name, rel_path, max_bytes=self.limits.max_file_bytes
                )
                sha, operation = hashlib.sha256(old).hexdigest(), "write"
            self._audit.append(
                rel_path=rel_path,
                operation=operation,
                bytes_written=0,
                source=f"rollback:{source}"[:_MAX_SOURCE_CHARS],
                sha256=sha,
            )
        except (MemoryStoreError, AuditLogError):
            log.error("memory_audit_rollback_failed", rel_path=rel_path)

    def _prepare(
        self, loc: Located, content: str, data: bytes, operation: Operation
    ) -> tuple[str, str, bytes]:
        """Return ``(name, full_text, full_bytes)`` for the file, checking every cap."""
        name = loc.name
        if name is None or (loc.st is not None and stat.S_ISDIR(loc.st.st_mode)):
            raise MemoryStoreError(f"is a directory: {loc.rel_path!r}")
        if loc.st is not None and not stat.S_ISREG(loc.st.st_mode):
            raise MemoryStoreError(f"not a regular file: {loc.rel_path!r}")
        cap = self.limits.max_file_bytes
        if loc.st is None:
            try:
                entries = count_entries(loc.parent_fd)
            except OSError as exc:
                raise MemoryStoreError(f"cannot list the directory: {exc.strerror}") from exc
            if entries >= self.limits.max_files_per_dir:
                raise MemoryStoreSizeLimitError(
                    f"the directory already holds {self.limits.max_files_per_dir} entries; "
                    f"cannot create {loc.rel_path!r}"
                )
            return name, content, data
        if operation == "write":
            return name, content, data
        old = read_bytes(loc.parent_fd, name, loc.rel_path, max_bytes=self.limits.max_file_bytes)
        if len(old) + len(data) > cap:
            raise MemoryStoreSizeLimitError(
                f"appending {len(data)} bytes to {loc.rel_path!r} ({len(old)} bytes) "
                f"would exceed the {cap}-byte file cap"
            )
        return name, self._decode(old, loc.rel_path) + content, old + data

    def _finish_last_operation(self) -> None:
        """Finish a change whose audit record was appended but which a crash cut short.

        Only the newest record can be unfinished: changes are recorded one at a time
        under the store lock, each completed before the next begins. A write is
        finished by renaming its temp file (found by name and by the recorded
        SHA-256) into place; a delete by unlinking the file if it still holds the
        content recorded before the delete. Anything else is left for
        ``familiar memory verify`` to report.
        """
        entries = self._audit.entries()
        if not entries:
            return
        last = entries[-1]
        try:
            loc = locate(self._root_posix, normalize_rel_path(last.rel_path))
        except MemoryStoreError:
            return
        try:
            if loc.name is None or (loc.st is not None and not stat.S_ISREG(loc.st.st_mode)):
                return
            current = self._sha256_of(loc.parent_fd, loc.name, last.rel_path) if loc.st else None
            if last.operation == "delete":
                before = next(
                    (e.sha256 for e in reversed(entries[:-1]) if e.rel_path == last.rel_path),
                    None,
                )
                if current is not None and current == before:
                    os.unlink(loc.name, dir_fd=loc.parent_fd)
                    os.fsync(loc.parent_fd)
                    log.warning("memory_delete_finished_on_open", rel_path=last.rel_path)
                return
            if current == last.sha256:
                return
            stem = make_temp_name(loc.name).rpartition(".tmp-")[0] + ".tmp-"
            for candidate in sorted(os.listdir(loc.parent_fd)):
                if not (candidate.startswith(stem) and is_temp_name(candidate)):
                    continue
                if self._sha256_of(loc.parent_fd, candidate, last.rel_path) == last.sha256:
                    commit_temp(loc.parent_fd, candidate, loc.name, last.rel_path)
                    log.warning("memory_write_finished_on_open", rel_path=last.rel_path)
                    return
        except (OSError, MemoryStoreError):
            log.exception("memory_finish_on_open_failed", rel_path=last.rel_path)
        finally:
            os.close(loc.parent_fd)

    def _sha256_of(self, dir_fd: int, name: str, rel_path: str) -> str | None:
        try:
            data = read_bytes(dir_fd, name, rel_path, max_bytes=self.limits.max_file_bytes)
        except MemoryStoreError:
            return None
        return hashlib.sha256(data).hexdigest()

    def _notify(self, rel_path: str, content: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(rel_path, content)
            except Exception:
                log.exception("memory_write_listener_failed", rel_path=rel_path)

    def _remove_stale_temp_files(self) -> None:
        """Delete temp files a killed process left behind (only names of our own shape)."""
        removed = 0
        with self._open_dir(()) as (root_fd, _):
            walk = iter_tree(root_fd, (), descend=lambda _p: True, include_temp=True)
            with contextlib.closing(walk):
                for dir_fd, name, _parts, st in walk:
                    if is_temp_name(name) and stat.S_ISREG(st.st_mode):
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dir_fd)
                            removed += 1
        if removed:
            log.info("memory_stale_temp_files_removed", count=removed)


def _check_source(source: object) -> None:
    if not isinstance(source, str) or not source or len(source) > _MAX_SOURCE_CHARS:
        raise MemoryStoreError(f"source must be a non-empty string of at most {_MAX_SOURCE_CHARS}")


def _check_context(context: Mapping[str, str] | None) -> dict[str, str]:
    if context is None:
        return {}
    if not isinstance(context, Mapping) or len(context) > _MAX_CONTEXT_ITEMS:
        raise MemoryStoreError(f"context must be a mapping of at most {_MAX_CONTEXT_ITEMS} items")
    pairs: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise MemoryStoreError("context keys and values must be strings")
        if len(key) > _MAX_CONTEXT_KEY_CHARS or len(value) > _MAX_CONTEXT_VALUE_CHARS:
            raise MemoryStoreError("a context key or value is too long")
        pairs[key] = value
    return pairs
