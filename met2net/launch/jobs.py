"""``<run>/jobs.tsv``: one line per submitted job, written by ``met2net submit`` and ``slurm/pipeline.sh``,
read by ``met2net status``. Tab-separated so the shell script can append with one ``printf``."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from pathlib import Path

from met2net.errors import UserError

FILENAME = "jobs.tsv"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    executor: str  # slurm | local
    name: str
    schedule: str
    round: int
    run_dir: str
    log: str


COLUMNS = tuple(f.name for f in fields(JobRecord))


def append_records(run_dir: Path, records: list[JobRecord]) -> Path:
    path = Path(run_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write("\t".join(COLUMNS) + "\n")
        for record in records:
            f.write("\t".join(str(v) for v in astuple(record)) + "\n")
    return path


def read_records(run_dir: Path) -> list[JobRecord]:
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines()[1:], start=2):
        values = line.split("\t")
        if len(values) != len(COLUMNS):
            raise UserError(
                f"{path}:{n}: expected {len(COLUMNS)} tab-separated columns ({', '.join(COLUMNS)}), found {len(values)}"
            )
        records.append(JobRecord(*values[:4], int(values[4]), *values[5:]))
    return records
