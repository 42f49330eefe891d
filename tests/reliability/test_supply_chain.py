"""Supply chain: every dependency pinned and locked; the audit script tells audited from unaudited.

``scripts/audit_deps.py`` is what CI runs over ``uv.lock`` (see docs/reliability.md).
Here it runs against a loopback fake of PyPI's JSON API, so the test needs no
network: a vulnerable pin must fail the audit, a package the registry cannot
describe must be reported as unaudited (never as clean), and ``--strict`` must
fail on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import re
import sys
import tomllib
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes._server import FakeServer
from tests.reliability.figures import record

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\],]+)==([^;\s]+)")


def _load_audit_script() -> Any:
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts" / "audit_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


audit_deps = _load_audit_script()


class FakePyPI(FakeServer):
    """PyPI's JSON API, with per-project documents and per-version documents set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.projects: dict[str, dict[str, Any]] = {}
        self.versions: dict[tuple[str, str], dict[str, Any]] = {}
        self.app.router.add_get("/pypi/{name}/json", self._project)
        self.app.router.add_get("/pypi/{name}/{version}/json", self._version)

    async def _project(self, request: web.Request) -> web.Response:
        document = self.projects.get(request.match_info["name"])
        return web.json_response(document) if document else web.Response(status=404)

    async def _version(self, request: web.Request) -> web.Response:
        key = (request.match_info["name"], request.match_info["version"])
        document = self.versions.get(key)
        return web.json_response(document) if document else web.Response(status=404)


LOCK = """
version = 1
[[package]]
name = "familiar-connect"
version = "0.1.0"
source = { editable = "." }

[[package]]
name = "goodpkg"
version = "1.0.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "badpkg"
version = "2.0.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "oldpkg"
version = "0.9.0"
source = { registry = "https://pypi.org/simple" }
"""

VULN = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-1"], "fixed_in": ["2.0.1"], "summary": "bad"}


class TestPins:
    def test_every_dependency_is_pinned_and_locked(self) -> None:
        """Every runtime and dev dependency is pinned with == and uv.lock holds that exact version."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())
        specs = [*project["project"]["dependencies"], *project["dependency-groups"]["dev"]]
        lock = tomllib.loads((ROOT / "uv.lock").read_text())
        locked = {p["name"].lower(): p["version"] for p in lock["package"]}
        for spec in specs:
            match = _PIN.match(spec)
            assert match, f"{spec!r} is not pinned with =="
            name = re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-").replace(".", "-")
            assert locked.get(name) == match.group(2), (spec, locked.get(name))
        record("supply-chain", "pins", pinned=len(specs), locked_packages=len(locked))


class TestAuditScript:
    async def test_reports_vulnerable_clean_and_unaudited(self, tmp_path: Path) -> None:
        """A vulnerable pin fails the audit; a pin the registry cannot describe is listed as unaudited."""
        lock = tmp_path / "uv.lock"
        lock.write_text(LOCK)
        report = tmp_path / "audit.json"
        async with FakePyPI() as pypi:
            # goodpkg: only the project document (a proxy), latest == locked, no vulnerabilities.
            pypi.projects["goodpkg"] = {"info": {"version": "1.0.0"}, "vulnerabilities": []}
            # badpkg: the version document lists a vulnerability.
            pypi.versions[("badpkg", "2.0.0")] = {"info": {}, "vulnerabilities": [VULN]}
            # oldpkg: locked behind the latest release; the registry has no version document.
            pypi.projects["oldpkg"] = {"info": {"version": "1.0.0"}, "vulnerabilities": []}
            api = f"{pypi.base_url}/pypi"
            out = io.StringIO()

            def run(*extra: str) -> int:
                with redirect_stdout(out):
                    return audit_deps.main(
                        ["--lock", str(lock), "--api", api, "--json", str(report), *extra]
                    )

            code = await asyncio.to_thread(run)
            del pypi.versions[("badpkg", "2.0.0")]
            pypi.projects["badpkg"] = {"info": {"version": "2.0.0"}, "vulnerabilities": []}
            strict_code = await asyncio.to_thread(run, "--strict")
        assert code == audit_deps.EXIT_VULNERABLE
        assert strict_code == audit_deps.EXIT_UNAUDITED
        text = out.getvalue()
        assert "VULNERABLE badpkg 2.0.0: PYSEC-2099-1 (fixed in 2.0.1)" in text
        assert "unaudited  oldpkg 0.9.0: locked 0.9.0 is not the latest (1.0.0)" in text
        rows = {row["name"]: row for row in json.loads(report.read_text())}
        assert set(rows) == {"goodpkg", "badpkg", "oldpkg"}
        assert rows["goodpkg"]["status"] == "audited"
        assert rows["oldpkg"]["status"] == "unaudited"
