"""Crash safety: a writer killed with SIGKILL mid-stream leaves old-or-new files and a sane log."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from familiar_connect.memory.audit import AuditLog, verify_audit
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
        """After SIGKILL, files are old-or-new, verify names only the in-flight op, and reopening cleans temps."""
        root, audit = tmp_path / "memory", tmp_path / "audit.jsonl"
        run_and_kill(root, audit, delay_s=delay_s + random.uniform(0, 0.002))  # noqa: S311
        check_file_contents(root)

        result = verify_audit(audit, root)
        in_flight = op_path(result.records_checked)
        for issue in result.issues:
            if issue.kind == "torn_tail":
                continue
            # The file was replaced but the kill came before its record was appended.
            assert issue.kind in ("file_changed", "not_in_audit_log"), result.problems
            assert issue.rel_path == in_flight, result.problems

        loaded = AuditLog(audit).entries()
        assert len(loaded) == result.records_checked
        assert [e.seq for e in loaded] == list(range(1, len(loaded) + 1))

        reopened = MemoryStore(root, audit_path=audit)
        assert stale_temp_files(root) == []
        # Reopening moved any torn record aside, so only the in-flight file can remain.
        after_reopen = verify_audit(audit, root)
        assert all(issue.kind != "torn_tail" for issue in after_reopen.issues), (
            after_reopen.problems
        )
        assert {issue.rel_path for issue in after_reopen.issues} <= {in_flight}
        assert reopened.audit_entries == loaded
        reopened.write_file("after.md", "after crash", source="test")
        assert reopened.audit_entries[-1].prev_hash == loaded[-1].hash
        assert reopened.audit_entries[-1].seq == loaded[-1].seq + 1
        assert os.listdir(root / "notes")
