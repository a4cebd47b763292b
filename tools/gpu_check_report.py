"""The report of tools/gpu_check.sh: OUT/gpu_check.json and OUT/summary.md from the stages'
statuses, the test stages' JUnit XML and the benchmark part's bench_gpu.{json,md}.

    python tools/gpu_check_report.py --stages stages.tsv --junit DIR --out OUT --native-built 1

stages.tsv holds one line per stage: name, kind (correctness / benchmark / support),
status (``passed``, ``failed (exit N)``, ``timed out after N s``, ``skipped: why``),
seconds, limit. A test stage passes only when its tests ran: all skipped is a failure
(no GPU test was exercised). Exits 1 when a correctness stage failed or timed out, else 0;
a skipped stage (no compute-sanitizer, say) fails nothing but leaves the native kernels
unverified.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: What must pass before the native CUDA kernels can become CUDA's default backend.
NATIVE_EVIDENCE = ("build", "tests_native", "memcheck", "racecheck")


def junit_counts(path: Path) -> dict[str, int] | None:
    """{tests, passed, failures, errors, skipped} of a pytest --junitxml file, or None."""
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def read_stages(path: Path, junit: Path) -> list[dict[str, Any]]:
    stages = []
    for line in path.read_text().splitlines():
        name, kind, status, seconds, limit = (line.split("\t") + [""] * 5)[:5]
        stage = {"name": name, "kind": kind, "status": status, "seconds": int(seconds or 0)}
        stage["limit_s"] = int(limit) if limit else None
        counts = junit_counts(junit / f"{name}.xml")
        if counts is not None:
            stage["tests"] = counts
            if status == "passed" and counts["passed"] == 0:
                stage["status"] = "failed (no test ran: all skipped)"
        stages.append(stage)
    return stages


def summary_markdown(report: dict[str, Any], bench_md: str) -> str:
    lines = ["# condnum GPU check", ""]
    verdict = "PASSED" if report["passed"] else "FAILED"
    native = f"**{report['native_cuda_verified']}** ({report['native_reason']})"
    lines.append(f"Result: **{verdict}**; native CUDA kernels verified: {native}.")
    lines += ["", "| stage | kind | status | seconds | limit | tests passed/failed/skipped |"]
    lines.append("|---|---|---|---|---|---|")
    for s in report["stages"]:
        t = s.get("tests")
        tests = f"{t['passed']}/{t['failures'] + t['errors']}/{t['skipped']}" if t else ""
        lines.append(f"| {s['name']} | {s['kind']} | {s['status']} | {s['seconds']} | "
                     f"{s['limit_s'] or ''} | {tests} |")  # fmt: skip
    lines += ["", "Full output of every stage: gpu_check.log.", ""]
    return "\n".join(lines) + ("\n" + bench_md if bench_md else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=Path, required=True)
    p.add_argument("--junit", type=Path, required=True, help="folder of STAGE.xml files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--native-built", type=int, choices=[0, 1], required=True)
    args = p.parse_args()
    stages = read_stages(args.stages, args.junit)
    by_name = {s["name"]: s for s in stages}
    failed = [
        s["name"]
        for s in stages
        if s["kind"] == "correctness"
        and s["status"] != "passed"
        and not s["status"].startswith("skipped")
    ]
    missing = [n for n in NATIVE_EVIDENCE if by_name.get(n, {}).get("status") != "passed"]
    native_ok = bool(args.native_built) and not missing
    reason = "build, tests_native, memcheck and racecheck passed" if native_ok else (
        "not passed: " + ", ".join(f"{n} ({by_name[n]['status'] if n in by_name else 'not run'})"
                                   for n in missing))  # fmt: skip
    bench_json = args.out / "bench_gpu.json"
    bench_md = args.out / "bench_gpu.md"
    report = {
        "passed": not failed,
        "failed_stages": failed,
        "native_cuda_verified": native_ok,
        "native_reason": reason,
        "tf32": "off for every product and eigensolve (torch.backends.cuda.matmul.allow_tf32)",
        "stages": stages,
        "bench": json.loads(bench_json.read_text()) if bench_json.exists() else None,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = summary_markdown(report, bench_md.read_text() if bench_md.exists() else "")
    (args.out / "summary.md").write_text(text)
    print(text.split("\n# condnum GPU benchmarks")[0])
    result = "passed" if not failed else "FAILED: " + ", ".join(failed)
    print(f"gpu_check: {result}; native_cuda_verified={native_ok}; wrote {args.out}/summary.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
