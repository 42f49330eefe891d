"""Crash safety: a writer killed with SIGKILL mid-stream leaves old-or-new files and a sane log."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from familiar_connect.errors import AuditLogError
from familiar_connect.memory.audit import DELETED_SHA256, AuditLog, verify_audit
from familiar_connect.memory.store import MemoryStore

# The child alternates: op 2i writes notes/f{i%5}.md, op 2i+1 appends line i to log.md.
CHILD = """
import logging, sys
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from familiar_connect.memory.store import MemoryStore
store = MemoryStore(sys.argv[1], audit_path=sys.argv[2])
print("ready", flush=True)
for i in range(200_000):
    store.write_file(f"notes/f{i % 5}.md", f"{i}\\n" * (1 + i % 300), source="crash_test")
    store.append_file("log.md", f"{i}\\n", source="crash_test")
"""

TEMP_RE = re.compile(r"^\..*\.tmp-[0-9a-f]{16}$")
WAIT_FOR_CHILD_S = 30.0


def op_path(op: int) -> str:
    """The file the child's op number ``op`` touches."""
    return f"notes/f{(op // 2) % 5}.md" if op % 2 == 0 else "log.md"


def stale_temp_files(root: Path) -> list[Path]:
    """Files under ``root`` named like the store's temp files."""
    return [p for p in root.rglob("*") if TEMP_RE.match(p.name)]


def run_and_kill(root: Path, audit: Path, *, delay_s: float) -> None:
    """Start the writer, let it get going, then SIGKILL it after ``delay_s``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(audit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr else b""
        # Wait (bounded) until some records exist, so the kill lands mid-stream.
        deadline_ns = time.monotonic_ns() + int(WAIT_FOR_CHILD_S * 1e9)
        while not (audit.exists() and audit.stat().st_size > 2000):
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic_ns() < deadline_ns, "writer made no progress"
            time.sleep(0.001)
        time.sleep(delay_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def check_file_contents(root: Path) -> None:
    """Every file holds exactly some complete value the child wrote: old or new, never a mix."""
    for n in range(5):
        path = root / "notes" / f"f{n}.md"
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        value = int(lines[0])
        assert value % 5 == n
        assert path.read_text() == f"{value}\n" * (1 + value % 300)
    log_lines = (root / "log.md").read_text().splitlines()
    assert log_lines == [str(i) for i in range(len(log_lines))]


@pytest.mark.slow
class TestCrashDuringWrites:
    @pytest.mark.parametrize("delay_s", [0.0, 0.003, 0.011])
    def test_sigkill_mid_stream(self, tmp_path: Path, delay_s: float) -> None:
        """After SIGKILL, files are old-or-new; reopening finishes the recorded change and verify is clean."""
        root, audit = tmp_path / "memory", tmp_path / "audit.jsonl"
        run_and_kill(root, audit, delay_s=delay_s + random.uniform(0, 0.002))  # noqa: S311
        check_file_contents(root)

        result = verify_audit(audit, root)
        # Only the newest record can be unfinished: recorded, its temp file not yet renamed
        # (the file then holds its old content, or does not exist yet).
        recorded_not_renamed = op_path(result.records_checked - 1)
        for issue in result.issues:
            if issue.kind == "torn_tail":
                continue
            assert issue.kind in ("file_changed", "file_missing"), result.problems
            assert issue.rel_path == recorded_not_renamed, result.problems

        loaded = AuditLog(audit).entries()
        assert len(loaded) == result.records_checked
        assert [e.seq for e in loaded] == list(range(1, len(loaded) + 1))

        reopened = MemoryStore(root, audit_path=audit)
        assert stale_temp_files(root) == []
        check_file_contents(root)
        after_reopen = verify_audit(audit, root)
        assert after_reopen.ok, after_reopen.problems
        assert reopened.audit_entries == loaded
        reopened.write_file("after.md", "after crash", source="test")
        assert reopened.audit_entries[-1].prev_hash == loaded[-1].hash
        assert reopened.audit_entries[-1].seq == loaded[-1].seq + 1
        assert os.listdir(root / "notes")


def simulate_cut_after_record(store: MemoryStore, rel_path: str, new_text: str) -> None:
    """Leave the state a SIGKILL between a write's audit record and its rename leaves."""
    data = new_text.encode()
    target = store.root / rel_path
    (target.parent / f".{target.name}.tmp-{'ab' * 8}").write_bytes(data)
    store._audit.append(  # the record goes in exactly as the store appends it
        rel_path=rel_path,
        operation="write",
        bytes_written=len(data),
        source="crash_test",
        sha256=hashlib.sha256(data).hexdigest(),
    )


class TestWriteAheadRecovery:
    def test_recorded_write_is_finished_on_open(self, tmp_path: Path) -> None:
        """A write recorded but not yet renamed into place is completed by the next open."""
        store = MemoryStore(tmp_path / "memory")
        store.write_file("people/ann.md", "old", source="test")
        simulate_cut_after_record(store, "people/ann.md", "new")
        assert not verify_audit(store.audit_path, store.root).ok

        reopened = MemoryStore(tmp_path / "memory")
        assert reopened.read_file("people/ann.md") == "new"
        assert stale_temp_files(reopened.root) == []
        assert verify_audit(reopened.audit_path, reopened.root).ok

    def test_recorded_new_file_is_finished_on_open(self, tmp_path: Path) -> None:
        """A new note recorded but not yet renamed into place (verify: missing) appears on open."""
        store = MemoryStore(tmp_path / "memory")
        store.write_file("people/ann.md", "old", source="test")
        simulate_cut_after_record(store, "people/bob.md", "brand new")
        kinds = {p.kind for p in verify_audit(store.audit_path, store.root).issues}
        assert kinds == {"file_missing"}

        reopened = MemoryStore(tmp_path / "memory")
        assert reopened.read_file("people/bob.md") == "brand new"
        assert verify_audit(reopened.audit_path, reopened.root).ok

    def test_recorded_delete_is_finished_on_open(self, tmp_path: Path) -> None:
        """A delete recorded before a crash stopped its unlink is completed by the next open."""
        store = MemoryStore(tmp_path / "memory")
        store.write_file("people/ann.md", "gone soon", source="test")
        store._audit.append(
            rel_path="people/ann.md",
            operation="delete",
            bytes_written=0,
            source="user-request",
            sha256=DELETED_SHA256,
        )

        reopened = MemoryStore(tmp_path / "memory")
        assert not (reopened.root / "people" / "ann.md").exists()
        assert verify_audit(reopened.audit_path, reopened.root).ok

    def test_unrecorded_temp_file_is_discarded(self, tmp_path: Path) -> None:
        """A temp file whose record never reached the log is swept; the old content stands."""
        store = MemoryStore(tmp_path / "memory")
        store.write_file("people/ann.md", "old", source="test")
        (store.root / "people" / f".ann.md.tmp-{'cd' * 8}").write_text("never recorded")

        reopened = MemoryStore(tmp_path / "memory")
        assert reopened.read_file("people/ann.md") == "old"
        assert stale_temp_files(reopened.root) == []
        assert verify_audit(reopened.audit_path, reopened.root).ok

    def test_temp_file_not_matching_the_record_is_not_renamed(self, tmp_path: Path) -> None:
        """Only a temp file holding exactly the recorded content is renamed into place."""
        store = MemoryStore(tmp_path / "memory")
        store.write_file("people/ann.md", "old", source="test")
        simulate_cut_after_record(store, "people/ann.md", "new")
        (store.root / "people" / f".ann.md.tmp-{'ab' * 8}").write_text("tampered")

        reopened = MemoryStore(tmp_path / "memory")
        assert reopened.read_file("people/ann.md") == "old"
        assert [p.rel_path for p in verify_audit(reopened.audit_path, reopened.root).issues] == [
            "people/ann.md"
        ]

    def test_audit_failure_leaves_the_file_unchanged(self, tmp_path: Path) -> None:
        """When the record cannot be appended the write is refused and the file keeps its content."""
        store = MemoryStore(tmp_path / "memory")
        store.write_file("people/ann.md", "old", source="test")
        store.audit_path.unlink()
        store.audit_path.mkdir()  # appending now fails with EISDIR

        with pytest.raises(AuditLogError):
            store.write_file("people/ann.md", "new", source="test")
        with pytest.raises(AuditLogError):
            store.delete_file("people/ann.md", source="test")
        assert store.read_file("people/ann.md") == "old"
        assert stale_temp_files(store.root) == []
