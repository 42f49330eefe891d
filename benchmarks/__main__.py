"""``python -m benchmarks [names] [--quick | --smoke] [--out DIR] [--check] [--list]``.

Runs the selected benchmarks (all by default) one after another, each in a fresh
Python process (so one benchmark's memory, threads and logging never colour the next
one's figures), writes ``<out>/<name>.json`` for each (unavailable ones too, with the
reason) and prints a short table of figures next to their DESIGN §6 targets.

Exit status: 0 when every selected benchmark ran (or is registered as unavailable);
1 when one crashed, or with ``--check`` when a gross-regression gate (a ratio far past
its limit) failed; 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks._harness import REPO_ROOT, BenchResult, Mode, RunContext, environment
from benchmarks.suite import SUITE, BenchmarkSpec, by_name

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes; minutes, not tens")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that a benchmark still runs"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a gross-regression ratio gate fails"
    )
    parser.add_argument("--list", action="store_true", help="list the suite and exit")
    parser.add_argument("--seed", type=int, default=8, help="seed of every generated workload")
    # Internal: run exactly one benchmark in this process (what the parent spawns).
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return parser


_EXIT_FAILED = 1
_EXIT_GATED = 3


def _select(names: Sequence[str]) -> list[BenchmarkSpec]:
    if not names:
        return list(SUITE)
    return [by_name(name) for name in names]


async def _run_one(spec: BenchmarkSpec, ctx: RunContext) -> BenchResult:
    started = time.monotonic()
    env = environment()
    if spec.module is None:
        result = BenchResult(
            spec.name, spec.title, status="unavailable", mode=ctx.mode, reason=spec.unavailable
        )
    else:
        try:
            module = importlib.import_module(spec.module)
            result = await module.run(ctx)
        except Exception as exc:
            traceback.print_exc()
            result = BenchResult(
                spec.name,
                spec.title,
                status="failed",
                mode=ctx.mode,
                reason=f"{type(exc).__name__}: {exc}",
            )
    result.environment = env
    result.environment_after = {"load_average": environment()["load_average"]}
    result.duration_s = round(time.monotonic() - started, 1)
    return result


def _print_table(spec: BenchmarkSpec, result: BenchResult) -> None:
    head = f"({spec.number}) {spec.name} [{result.status}, {result.duration_s:.0f} s]"
    print(head, flush=True)
    if result.status != "ok":
        print(f"    {result.reason}")
        return
    width = max((len(t.measure) for t in result.targets), default=10)
    for target in result.targets:
        mark = {True: "ok  ", False: "MISS", None: "    "}[target.met]
        line = f"  {mark} {target.measure:<{width}}  {target.value:>18}"
        if target.target:
            line += f"  (target {target.target})"
        print(line)
        if target.note:
            print(f"  {'':4} {'':<{width}}  {target.note}")
    for check in result.checks:
        if not check.ok:
            print(f"  GATE {check.name}: {check.value} > {check.limit}")


def _run_in_process(spec: BenchmarkSpec, mode: Mode, out_dir: Path, seed: int) -> int:
    """Run one benchmark here; exit code 0, 1 (crashed) or 3 (a gate failed)."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"familiar-bench-{spec.name}-"))
    try:
        ctx = RunContext(mode=mode, out_dir=out_dir, work_dir=work_dir, seed=seed)
        result = asyncio.run(_run_one(spec, ctx))
        path = result.write(out_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    _print_table(spec, result)
    print(f"    → {path}", flush=True)
    if result.status == "failed":
        return _EXIT_FAILED
    if any(not check.ok for check in result.checks):
        return _EXIT_GATED
    return 0


def _run_in_child(spec: BenchmarkSpec, args: argparse.Namespace, mode: Mode, out_dir: Path) -> int:
    argv = [sys.executable, "-m", "benchmarks", "--one", spec.name, "--out", str(out_dir)]
    argv += ["--seed", str(args.seed)]
    if mode != "full":
        argv.append(f"--{mode}")
    try:
        done = subprocess.run(argv, cwd=REPO_ROOT, timeout=4 * 3600, check=False)  # noqa: S603 - our own module, fixed argv
    except subprocess.TimeoutExpired:
        print(f"({spec.number}) {spec.name}: did not finish in 4 hours", flush=True)
        return _EXIT_FAILED
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for spec in SUITE:
            state = "available" if spec.module else f"not yet available: {spec.unavailable}"
            print(f"{spec.number} {spec.name:<14} {spec.title} [{state}]")
        return 0
    try:
        specs = _select(args.names)
    except KeyError as exc:
        print(f"unknown benchmark {exc}; see --list", file=sys.stderr)
        return 2
    mode: Mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out_dir: Path = args.out.resolve()
    if args.one:
        if len(specs) != 1:
            print("--one takes exactly one benchmark", file=sys.stderr)
            return 2
        return _run_in_process(specs[0], mode, out_dir, args.seed)
    started = time.monotonic()
    codes = [_run_in_child(spec, args, mode, out_dir) for spec in specs]
    print(f"suite finished in {time.monotonic() - started:.0f} s ({mode})", flush=True)
    if any(code not in (0, _EXIT_GATED) for code in codes):
        return 1
    if args.check and _EXIT_GATED in codes:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
