"""The manual voice smoke script only gets a syntax and ``--help`` check here: it talks to real Discord."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "smoke_voice.py"


class TestSmokeVoiceScript:
    def test_compiles(self, tmp_path: Path) -> None:
        """The script is valid Python for this interpreter."""
        py_compile.compile(str(SCRIPT), cfile=str(tmp_path / "smoke.pyc"), doraise=True)

    def test_help_needs_no_network_or_settings(self) -> None:
        """--help prints the usage and exits 0 without reading .env or connecting anywhere."""
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "--channel-id" in done.stdout and "never run it in CI" in done.stdout
