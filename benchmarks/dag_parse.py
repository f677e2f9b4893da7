"""Parse time of each DAG file next to an empty-DAG baseline, measured in the same run.

Each sample runs in a fresh interpreter (as Airflow's DAG processor does): Airflow is
imported first, then only the DagBag parse of one file is timed.

    python benchmarks/dag_parse.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"

EMPTY_DAG = """
from airflow.sdk import dag


@dag(dag_id="empty_baseline", schedule=None, tags=["baseline"])
def empty_baseline():
    pass


empty_baseline()
"""

PROBE = """
import json, sys, time
import airflow.sdk  # noqa: F401  (imported before timing, as in a warm DAG processor)
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "errors": len(bag.import_errors), "dags": len(bag.dags)}))
"""


def parse_once(path: Path, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "empty_baseline.py"
        baseline.write_text(EMPTY_DAG)
        files = [baseline, *sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))]
        env = {**os.environ, "AIRFLOW_HOME": str(Path(tmp) / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        samples: dict[str, list[float]] = {f.name: [] for f in files}
        errors: dict[str, int] = {}
        for _ in range(args.repeats):  # interleaved so drift hits every file alike
            for path in files:
                outcome = parse_once(path, env)
                samples[path.name].append(outcome["seconds"])
                errors[path.name] = outcome["errors"]
    base = statistics.median(samples[baseline.name])
    print(f"{'file':28} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'x baseline':>10} {'errors':>6}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"{name:28} {median * 1e3:10.1f} {min(values) * 1e3:8.1f} {max(values) * 1e3:8.1f} "
            f"{median / base:10.2f} {errors[name]:6d}"
        )
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
