"""Runs checkov's CloudFormation checks on synthesized templates and fails on any finding that
is neither skipped on its resource (with a reason, in its `Metadata.checkov`) nor listed in
pending.txt. Runs in .venv-checkov, which has checkov and nothing of the project.

    .venv-checkov/bin/python tests/checkov/scan.py DIR [DIR ...]   # folders of *.template.json

pending.txt lists findings whose fix waits on work in progress elsewhere, one per line:
`<check id> <logical id prefix> <why>`. An entry that matches no finding fails the scan too,
so the list only shrinks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

PENDING_FILE = Path(__file__).with_name("pending.txt")
CHECKOV = Path(sys.executable).with_name("checkov")
# No API key and no network: --skip-download keeps checkov from fetching Prisma Cloud guidelines.
CHECKOV_ARGS = ("--framework", "cloudformation", "--skip-download", "--output", "json")


class Finding(NamedTuple):
    check_id: str
    template: str
    logical_id: str
    name: str


class Pending(NamedTuple):
    check_id: str
    logical_id_prefix: str

    def covers(self, finding: Finding) -> bool:
        return finding.check_id == self.check_id and finding.logical_id.startswith(
            self.logical_id_prefix
        )


def read_pending(path: Path) -> list[Pending]:
    entries = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            check_id, prefix, _why = line.split(maxsplit=2)
            entries.append(Pending(check_id, prefix))
    return entries


def scan(templates: list[Path]) -> dict:
    run = subprocess.run(
        [str(CHECKOV), *CHECKOV_ARGS, "--file", *map(str, templates)],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode not in (0, 1):  # 1 means findings; anything else, checkov failed
        sys.exit(f"checkov exited {run.returncode}:\n{run.stderr}")
    (report,) = [r for r in _reports(json.loads(run.stdout)) if r["check_type"] == "cloudformation"]
    return report


def _reports(output: dict | list) -> list[dict]:
    return output if isinstance(output, list) else [output]


def findings(report: dict) -> list[Finding]:
    return [
        Finding(
            check_id=result["check_id"],
            template=Path(result["file_path"]).name,
            logical_id=result["resource"].split(".", 1)[1],
            name=result["check_name"],
        )
        for result in report["results"]["failed_checks"]
    ]


def main(directories: list[str]) -> int:
    templates = sorted(t for d in directories for t in Path(d).glob("*.template.json"))
    if not templates:
        sys.exit(f"no *.template.json in {directories}")
    report = scan(templates)
    pending = read_pending(PENDING_FILE)
    failed = findings(report)
    unexplained = [f for f in failed if not any(p.covers(f) for p in pending)]
    stale = [p for p in pending if not any(p.covers(f) for f in failed)]
    skipped = Counter(r["check_id"] for r in report["results"]["skipped_checks"])
    summary = report["summary"]
    print(
        f"checkov {summary['checkov_version']}: {len(templates)} templates, "
        f"{summary['passed']} passed, {summary['skipped']} skipped with a reason "
        f"({', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))}), "
        f"{len(failed) - len(unexplained)} pending, {len(unexplained)} unexplained"
    )
    for f in unexplained:
        print(f"  {f.check_id} {f.template} {f.logical_id}: {f.name}")
    for p in stale:
        print(f"  pending.txt: {p.check_id} {p.logical_id_prefix} matches no finding; remove it")
    if summary["parsing_errors"]:
        print(f"  {summary['parsing_errors']} templates checkov could not parse")
    return 1 if unexplained or stale or summary["parsing_errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
