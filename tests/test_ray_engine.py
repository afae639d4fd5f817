"""--engine ray: the same records as the local engine, resume, eval, S3 inputs and a killed actor.

One local Ray instance (2 CPUs) serves the whole module; a local S3 server (moto) on 127.0.0.1
stands in for a bucket. Without the ray extra these tests skip, except the one that checks the
install hint.
"""
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from csra_cli.cli import app

from .conftest import VOC, make_image

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="the ray extra is not installed (pip install 'csra[ray]')")

runner = CliRunner()


def csra(*args):
    return runner.invoke(app, [*map(str, args)], catch_exceptions=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def same_records(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert x["tags"] == y["tags"] and x["error"] == y["error"], x["path"]
        assert set(x["scores"]) == set(y["scores"])
        assert max((abs(x["scores"][c] - y["scores"][c]) for c in x["scores"]), default=0) < 1e-4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local S3 server (where moto[server] is installed), then one Ray instance whose workers
    see its address and dummy keys (workers take the environment they were started with)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        s3, endpoint = None, None
    else:
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        s3.start()
        endpoint = "http://{}:{}".format(*s3.get_host_and_port())
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": endpoint or "http://127.0.0.1:9",
           "CSRA_HOME": str(tmp_path_factory.mktemp("ray_home")), "CSRA_BACKEND": "torch",
           "RAY_worker_niceness": "0"}  # as csra's own local instances: workers not starved on a busy machine
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield endpoint
    finally:
        ray.shutdown()
        if s3:
            s3.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_without_ray_the_error_says_how_to_install(monkeypatch, image_folder, tiny_model_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    res = csra("tag", image_folder, "-m", tiny_model_path, "--engine", "ray")
    assert res.exit_code == 2
    assert "pip install 'csra[ray]'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = csra("tag", image_folder, "-m", tiny_model_path, "--engine", "spark")
    assert res.exit_code == 2 and "use local or ray" in res.stderr


def test_uri_inputs_need_the_ray_engine_and_no_sidecars(tiny_model_path):
    res = csra("tag", "s3://bucket/photos/", "-m", tiny_model_path)
    assert res.exit_code == 2 and "--engine ray" in res.stderr
    res = csra("tag", "s3://bucket/photos/", "-m", tiny_model_path, "--engine", "ray", "--sidecar", "txt")
    assert res.exit_code == 2 and "sidecar" in res.stderr


@needs_ray
def test_same_records_as_the_local_engine_bad_files_sidecars_and_resume(cluster, tmp_path, image_folder,
                                                                        tiny_model_path):
    (image_folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (image_folder / "empty.png").write_bytes(b"")
    m = ["-m", tiny_model_path, "--scores", "-b", "2"]
    local = csra("tag", image_folder, "-o", tmp_path / "local.jsonl", "-q", *m)
    on_ray = csra("tag", image_folder, "-o", tmp_path / "ray.jsonl", "--engine", "ray", "--sidecar", "txt", "-q", *m)
    assert local.exit_code == on_ray.exit_code == 1, on_ray.output  # some images failed
    a, b = read_jsonl(tmp_path / "local.jsonl"), read_jsonl(tmp_path / "ray.jsonl")
    assert len(b) == 6 and sum(r["error"] is not None for r in b) == 2
    same_records(a, b)
    assert b[0]["error"] is None and len(b[0]["scores"]) == 20
    assert (image_folder / "a.txt").read_text().strip() == ", ".join(b[0]["tags"])  # written by the driver
    assert not list(tmp_path.glob(".*partial*"))
    # an existing output still needs --overwrite
    again = csra("tag", image_folder, "-o", tmp_path / "ray.jsonl", "--engine", "ray", *m)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    # --resume sends only the images the output does not have to the cluster
    make_image(image_folder / "late1.jpg")
    make_image(image_folder / "late2.jpg")
    res = csra("tag", image_folder, "-o", tmp_path / "ray.jsonl", "--engine", "ray", "--resume", *m)
    # as locally: the two unreadable images are tried again, still fail, and the exit code says so
    assert res.exit_code == 1, res.output
    summary = " ".join(res.stderr.split())
    assert "trying again 2 image(s)" in summary
    assert "tagged │ 2 " in summary and "failed │ 2 " in summary and "already done (resume) │ 4 " in summary
    recs = read_jsonl(tmp_path / "ray.jsonl")
    assert len(recs) == 8 and len({r["path"] for r in recs}) == 8
    assert [r for r in recs if r["error"] is None][:4] == [r for r in b if r["error"] is None]


@needs_ray
def test_eval_on_ray_matches_local(cluster, tmp_path, image_folder, tiny_model_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,tags\n" + "".join(f"{p},{t}\n" for p, t in zip(
        sorted(image_folder.rglob("*.*")), ["cat", "dog;person", "cat", "person"])))
    m = ["eval", "--dataset", "csv", "--labels", labels, "-m", tiny_model_path, "-q", "--json", "-"]
    local = json.loads(csra(*m).stdout)
    on_ray = json.loads(csra(*m, "--engine", "ray").stdout)
    assert on_ray["num_images"] == 4 and abs(on_ray["mAP"] - local["mAP"]) < 1e-6


def _voc_images(n: int) -> list[Path]:
    if not VOC.is_dir():
        pytest.skip(f"shared VOC2007 data not found at {VOC}")
    return sorted((VOC / "VOC2007" / "JPEGImages").glob("*.jpg"))[:n]


@needs_ray
def test_s3_inputs_are_listed_here_and_read_on_the_workers(cluster, tmp_path, tiny_model_path):
    if cluster is None:
        pytest.skip("moto[server] is not installed (the local S3 server)")
    import boto3

    s3 = boto3.client("s3", endpoint_url=cluster, region_name="us-east-1")
    s3.create_bucket(Bucket="photos")
    local = tmp_path / "local"
    for img in _voc_images(5):
        s3.upload_file(str(img), "photos", f"voc/{img.name}")
        (local / "voc").mkdir(parents=True, exist_ok=True)
        (local / "voc" / img.name).write_bytes(img.read_bytes())
    s3.put_object(Bucket="photos", Key="voc/notes.txt", Body=b"not an image")  # not listed
    s3.put_object(Bucket="photos", Key="voc/zz-broken.jpg", Body=b"garbage")
    (local / "voc" / "zz-broken.jpg").write_bytes(b"garbage")
    res = csra("tag", "s3://photos/voc/", "-m", tiny_model_path, "--engine", "ray", "-q", "--scores",
               "-o", tmp_path / "s3.jsonl")
    assert res.exit_code == 1, res.output
    remote = read_jsonl(tmp_path / "s3.jsonl")
    assert [r["path"] for r in remote] == [f"s3://photos/voc/{p.name}" for p in sorted((local / "voc").iterdir())]
    assert remote[-1]["error"] == "not an image or an unsupported format"
    csra("tag", local / "voc", "-m", tiny_model_path, "-q", "--scores", "-o", tmp_path / "disk.jsonl")
    on_disk = read_jsonl(tmp_path / "disk.jsonl")
    for r in on_disk:
        r["path"] = "s3://photos/voc/" + Path(r["path"]).name
    same_records(remote, on_disk)


@needs_ray
def test_a_killed_actor_loses_and_repeats_no_image(cluster, tmp_path, tiny_model_path):
    import psutil

    folder = tmp_path / "many"
    for i in range(60):
        make_image(folder / f"img{i:03d}.png", size=(32, 32))
    out = tmp_path / "tags.jsonl"
    journal = out.with_name(f".{out.name}.partial.jsonl")
    killed: list[int] = []

    finished = threading.Event()

    def kill_a_scoring_actor():
        # Until the run is mid-way, however long a loaded machine takes to get there (issue 33).
        deadline = time.time() + 900
        while time.time() < deadline and not killed and not finished.is_set():
            if journal.exists() and journal.read_text().count("\n") >= 4:  # the actor is mid-run
                for proc in psutil.Process().children(recursive=True):
                    try:
                        if "ScoreBatch" in " ".join(proc.cmdline()):
                            proc.kill()
                            killed.append(proc.pid)
                            return
                    except psutil.Error:
                        continue
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_scoring_actor, daemon=True)
    killer.start()
    res = csra("tag", folder, "-m", tiny_model_path, "--engine", "ray", "-b", "2", "-q", "-o", out)
    finished.set()
    killer.join(timeout=60)
    assert killed, "the scoring actor was not found while the run went on"
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert sorted(r["path"] for r in recs) == sorted(str(p) for p in folder.iterdir())  # each exactly once
    csra("tag", folder, "-m", tiny_model_path, "-b", "2", "-q", "-o", tmp_path / "local.jsonl")
    same_records(recs, read_jsonl(tmp_path / "local.jsonl"))
