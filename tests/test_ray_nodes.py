"""--engine ray on several nodes (raylets of a ray.cluster_utils.Cluster on this machine, each with
its own CPUs): a worker node killed mid-run (its raylet, kill -9) and then the driver itself lose
and repeat no image, and the records are the local engine's. Skips without the ray extra."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csra_cli.cli import app

from .conftest import journal_lines, make_image, wait_for

try:
    import ray.cluster_utils
except ImportError:
    ray = None

pytestmark = pytest.mark.skipif(ray is None, reason="the ray extra is not installed (pip install 'csra[ray]')")
REPO = Path(__file__).resolve().parent.parent
# A dead node is noticed after a few missed health checks, not the default ~30 s.
FAST_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
                "RAY_health_check_initial_delay_ms": "0", "RAY_worker_niceness": "0"}


def records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.fixture
def three_nodes(monkeypatch):
    for k, v in FAST_FAILURE.items():
        monkeypatch.setenv(k, v)
    cluster = ray.cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        cluster.shutdown()


def test_losing_a_node_then_the_driver_loses_and_repeats_no_image(three_nodes, tmp_path, tiny_model_path):
    cluster, workers = three_nodes
    folder = tmp_path / "many"
    for i in range(600):
        make_image(folder / f"img{i:03d}.png", size=(32, 32))
    out = tmp_path / "tags.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": cluster.address}
    cmd = [sys.executable, "-m", "csra_cli", "tag", str(folder), "-m", str(tiny_model_path), "--engine", "ray",
           "-b", "2", "-q", "-o", str(out)]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for("a first record", lambda: journal_lines(out) >= 1, proc)
    workers[0].kill_raylet()  # kill -9 of one worker node's raylet, mid-run
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, stderr
    assert stderr == "", stderr  # -q: nothing of Ray's on stderr either
    first = records(out)
    assert sorted(r["path"] for r in first) == sorted(str(p) for p in folder.iterdir())  # each exactly once

    # the driver itself killed mid-run, then --resume on the two nodes left
    out2 = tmp_path / "again.jsonl"
    cmd2 = cmd[:-1] + [str(out2)]
    proc = subprocess.Popen(cmd2, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("a first record", lambda: journal_lines(out2) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = journal_lines(out2)
    assert 1 <= done_before < 600
    res = subprocess.run(cmd2 + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    second = records(out2)
    assert sorted(r["path"] for r in second) == sorted(str(p) for p in folder.iterdir())

    local = tmp_path / "local.jsonl"
    res = CliRunner().invoke(app, ["tag", str(folder), "-m", str(tiny_model_path), "-b", "2", "-q", "-o", str(local)],
                             catch_exceptions=False)
    assert res.exit_code == 0
    want = {r["path"]: r for r in records(local)}
    for got in (first, second):
        for r in got:
            w = want[r["path"]]
            assert r["tags"] == w["tags"] and r["error"] == w["error"], r["path"]
            assert max((abs(r["scores"][c] - w["scores"][c]) for c in r["scores"]), default=0) < 1e-4
