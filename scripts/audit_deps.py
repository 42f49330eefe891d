"""Audit the locked dependencies (uv.lock) for known vulnerabilities, through PyPI's JSON API.

Why not only ``pip-audit``: its PyPI service asks for
``/pypi/<name>/<version>/json``. Behind a registry proxy that serves only the
project document (``/pypi/<name>/json``) every dependency comes back "not
found", and ``pip-audit`` then reports "No known vulnerabilities found" with
exit 0 although it audited nothing (``--strict`` turns that into a failure,
which is right but says nothing about the dependencies). This script asks for
the version document first and falls back to the project document, whose
``vulnerabilities`` are those of the latest release, so it applies exactly
when the locked version *is* the latest. Anything it cannot audit is listed,
never counted as clean.

Output: one line per finding and a summary; ``--json FILE`` writes everything.
Exit codes: 0 nothing found; 1 a locked version has a known vulnerability;
2 (with ``--strict``) some packages could not be audited; 3 the lock is unreadable.

Usage::

    uv run python scripts/audit_deps.py                # every package in uv.lock
    uv run python scripts/audit_deps.py --strict --json audit.json
    uv run python scripts/audit_deps.py --only aiohttp httpx
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API = "https://pypi.org/pypi"
EXIT_OK, EXIT_VULNERABLE, EXIT_UNAUDITED, EXIT_BAD_LOCK = 0, 1, 2, 3


@dataclass
class Audit:
    """What is known about one locked package."""

    name: str
    version: str
    status: str = "unaudited"  # audited | unaudited
    source: str = ""  # version document, or project document (latest == locked)
    latest: str | None = None
    vulnerabilities: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def locked_packages(lock_path: Path, project: str | None) -> list[tuple[str, str]]:
    """``(name, version)`` of every registry package in ``uv.lock`` except the project itself."""
    document = tomllib.loads(lock_path.read_text(encoding="utf-8"))
    packages = []
    for package in document.get("package", []):
        source = package.get("source", {})
        if package.get("name") == project or "registry" not in source:
            continue
        packages.append((package["name"], package["version"]))
    return sorted(packages)


def _get_json(url: str, timeout_s: float) -> dict[str, Any] | None:
    # main() only lets https:// (or a loopback http:// test server) through.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _vulns(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": v.get("id"),
            "aliases": v.get("aliases") or [],
            "fixed_in": v.get("fixed_in") or [],
            "summary": (v.get("summary") or v.get("details") or "")[:200],
        }
        for v in document.get("vulnerabilities") or []
        if not v.get("withdrawn")
    ]


def audit_one(name: str, version: str, *, api: str, timeout_s: float) -> Audit:
    """Audit one package: the version document if the registry has it, else the project's."""
    audit = Audit(name, version)
    try:
        document = _get_json(f"{api}/{name}/{version}/json", timeout_s)
        if document is not None:
            audit.status, audit.source = "audited", "version document"
            audit.vulnerabilities = _vulns(document)
            return audit
        document = _get_json(f"{api}/{name}/json", timeout_s)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        audit.note = f"registry unreachable: {type(exc).__name__}"
        return audit
    if document is None:
        audit.note = "not on the registry"
        return audit
    audit.latest = str(document.get("info", {}).get("version"))
    if audit.latest != version:
        audit.note = f"locked {version} is not the latest ({audit.latest}); no per-version data"
        return audit
    audit.status, audit.source = "audited", "project document (latest == locked)"
    audit.vulnerabilities = _vulns(document)
    return audit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lock", type=Path, default=Path(__file__).resolve().parents[1] / "uv.lock"
    )
    parser.add_argument("--project", default="familiar-connect")
    parser.add_argument("--api", default=DEFAULT_API, help="PyPI JSON API root")
    parser.add_argument("--only", nargs="*", default=None, help="audit only these packages")
    parser.add_argument("--strict", action="store_true", help="exit 2 if anything is unaudited")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument("--timeout-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    if not args.api.startswith(("https://", "http://127.0.0.1:", "http://localhost:")):
        parser.error("--api must be https:// (or a loopback http:// test server)")
    try:
        packages = locked_packages(args.lock, args.project)
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        print(f"audit: cannot read {args.lock}: {exc}", file=sys.stderr)
        return EXIT_BAD_LOCK
    if args.only is not None:
        wanted = {name.lower() for name in args.only}
        packages = [(n, v) for n, v in packages if n.lower() in wanted]
    audits = [
        audit_one(n, v, api=args.api.rstrip("/"), timeout_s=args.timeout_s) for n, v in packages
    ]
    vulnerable = [a for a in audits if a.vulnerabilities]
    unaudited = [a for a in audits if a.status != "audited"]
    for audit in vulnerable:
        for vuln in audit.vulnerabilities:
            fixed = ", ".join(vuln["fixed_in"]) or "no fix yet"
            print(
                f"VULNERABLE {audit.name} {audit.version}: {vuln['id']} (fixed in {fixed}) {vuln['summary']}"
            )
    for audit in unaudited:
        print(f"unaudited  {audit.name} {audit.version}: {audit.note}")
    print(
        f"audit: {len(audits)} locked packages, {len(audits) - len(unaudited)} audited, "
        f"{len(unaudited)} unaudited, {len(vulnerable)} with known vulnerabilities"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(a) for a in audits], indent=1) + "\n")
    if vulnerable:
        return EXIT_VULNERABLE
    if unaudited and args.strict:
        return EXIT_UNAUDITED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
