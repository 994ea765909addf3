"""Database connections a sweep's workers hold: a private PostgreSQL server (as root, like the
tests), ``sweep run --jobs N`` of 2N tiny trials, ``pg_stat_activity`` sampled every 0.1 s.

    python -m benchmarks.sweep_connections N DATA_DIR     # from the repository's root

Prints the peak and mean number of connections to the sweep's database (the launching process's
own included: with N > 1 it holds one besides its N workers). docs/many-machines.md quotes it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sweep_helpers import cli_env, write_spec  # noqa: E402
from sweep_services import start_postgres  # noqa: E402


def main(jobs: int, data_dir: str) -> None:
    pg = start_postgres()
    try:
        url = pg.createdb("measure")
        folder = Path(tempfile.mkdtemp())
        spec = write_spec(folder / "spec.yaml", trials=2 * jobs,
                          set={"train.epochs": 30, "data.subset": 3000, "data.val_size": 500,
                               "model.hidden": [16]})
        proc = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec),
                                 "--dir", str(folder / "sw"), "--storage", url, "--jobs",
                                 str(jobs), "--data-dir", data_dir], env=cli_env(),
                                stderr=subprocess.DEVNULL)
        samples = []
        while proc.poll() is None:
            count = pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity "
                                        "WHERE datname = 'measure'").strip()
            samples.append(int(count or 0))
            time.sleep(0.1)
        print(f"jobs={jobs} exit={proc.returncode} peak={max(samples)} "
              f"mean={sum(samples) / len(samples):.2f} samples={len(samples)}")
    finally:
        pg.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
