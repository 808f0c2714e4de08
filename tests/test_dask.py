"""Scale-out on Dask: the same run folders from a cluster, faults with real processes, bad input.

The cluster tests run `dask scheduler` and `dask worker` processes on 127.0.0.1 (the scheduler's own
process only where a test needs no worker of its own). Slides are small (1024 x 1024 px, about 150
tissue tiles) and training has 2 epochs, so that a slide takes seconds.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from run_helpers import assert_one_cohort

from tumls_qp.cli import main
from tumls_qp.config import PipelineConfig, dump_config, replace_in
from tumls_qp.errors import ConfigError, DeviceError, EngineError, InvalidInputError, SlideOpenError
from tumls_qp.outputs.geojson import validate_geojson, validate_geojson_file
from tumls_qp.outputs.run_folder import read_run
from tumls_qp.testing import write_synthetic_slide

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed: pip install 'tumls-qp[dask]'")

from tumls_qp.dask_engine import PROGRESS_STAGE, analyze_on_dask  # noqa: E402

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).with_name("dask"))
PRELOAD_MISMATCH = Path(__file__).with_name("dask_mismatch_preload.py")


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("dask-slides")
    return [write_synthetic_slide(folder / f"s{i}.tif", 1024, 1024, 0.5, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def tiny() -> PipelineConfig:
    return replace_in(PipelineConfig(), **{"tiles.tile_um": 32.0, "embedding.max_epochs": 2,
                                           "embedding.device": "cpu", "output.report": False,
                                           "output.embedding_colours": "none"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds:g} s")
        time.sleep(0.1)


class LoopbackCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1; each worker runs one task at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, str] = {}  # name -> address
        self.address = ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        proc = subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        self.procs[name] = proc
        return proc

    def start_scheduler(self) -> str:
        file = self.folder / "scheduler.json"
        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(file)])
        _wait(lambda: file.is_file() and file.stat().st_size > 0, 60, "the scheduler did not start")
        self.address = json.loads(file.read_text())["address"]
        return self.address

    def start_worker(self, name: str, *extra: str, scheduler: str | None = None) -> str:
        port = _free_port()
        self._spawn(name, ["worker", scheduler or self.address, "--no-nanny", "--nthreads", "1", "--host",
                           "127.0.0.1", "--worker-port", str(port), "--no-dashboard", "--name", name, *extra])
        address = f"tcp://127.0.0.1:{port}"
        self.workers[name] = address
        return address

    def wait_for(self, addresses: list[str], scheduler: str | None = None) -> None:
        with distributed.Client(scheduler or self.address, timeout=30) as client:
            _wait(lambda: set(addresses) <= set(client.scheduler_info(n_workers=-1)["workers"]), 90,
                  f"workers {addresses} did not join")

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two workers: ``gpu`` declares the resource GPU=1 (no CUDA behind it here), ``cpu`` none."""
    c = LoopbackCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        c.start_scheduler()
        c.wait_for([c.start_worker("gpu", "--resources", "GPU=1"), c.start_worker("cpu")])
        yield c
    finally:
        c.stop()


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _assert_complete(run_dir: Path) -> None:
    run = read_run(run_dir)
    assert validate_geojson_file(run.geojson_path) == []
    assert len(run.tiles.boxes) == run.manifest.tiles.kept and run.representatives


# --- without a cluster --------------------------------------------------------------------------------------------------

def test_an_unreachable_scheduler_is_a_clear_error_within_seconds(small_slides, tiny, tmp_path):
    nothing = f"tcp://127.0.0.1:{_free_port()}"
    with socket.socket() as silent:  # takes connections and never answers (a Dask client alone would wait forever)
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for address in (nothing, f"tcp://127.0.0.1:{silent.getsockname()[1]}"):
            start = time.monotonic()
            with pytest.raises(EngineError, match=rf"no Dask scheduler answered at {re.escape(address)} \(gave up "
                                                  r"after \d s.*not its dashboard's"):
                analyze_on_dask(small_slides[:1], tmp_path / "out", tiny, scheduler=address)
            assert time.monotonic() - start < 15
    assert not (tmp_path / "out").exists()
    assert main(["analyze", str(small_slides[0]), "--out", str(tmp_path / "out"), "--scheduler", nothing, "-q"]) == 6
    # The server too: it does not start.
    from tumls_qp.server.dask_runner import DaskRunner
    from tumls_qp.server.settings import ServerSettings

    runner = DaskRunner(ServerSettings(data_dir=tmp_path / "data", roots=(tmp_path,), scheduler=nothing))
    with pytest.raises(EngineError, match=f"no Dask scheduler answered at {re.escape(nothing)}"):
        runner.start()


def test_bad_engine_options_are_named(small_slides, tiny, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="--workers must be a whole number of worker processes, 1 or more; got 0"):
        analyze_on_dask(small_slides[:1], tmp_path, tiny, workers=0)
    with pytest.raises(ConfigError, match="give one of --scheduler ADDRESS .* or --workers N"):
        analyze_on_dask(small_slides[:1], tmp_path, tiny, scheduler="tcp://127.0.0.1:1", workers=2)
    with pytest.raises(ConfigError, match="'tcp://no-port-here' is not a Dask scheduler address"):
        analyze_on_dask(small_slides[:1], tmp_path, tiny, scheduler="tcp://no-port-here")
    with pytest.raises(SystemExit):
        main(["analyze", str(small_slides[0]), "--out", str(tmp_path), "--scheduler", "x:1", "--workers", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)  # the dask extra not installed
    assert main(["analyze", str(small_slides[0]), "--out", str(tmp_path), "--workers", "2", "-q"]) == 2
    assert "pip install 'tumls-qp[dask]'" in capsys.readouterr().err


def test_a_cluster_without_workers_is_waited_for_then_an_error(small_slides, tiny, tmp_path):
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as empty:
        start = time.monotonic()
        with pytest.raises(EngineError, match=r"has no worker \(waited 1 s\).*dask worker .*--wait-for-workers"):
            analyze_on_dask(small_slides[:1], tmp_path / "out", tiny, scheduler=empty.scheduler_address,
                            wait_for_workers_s=1)
        assert 1 <= time.monotonic() - start < 15


def test_a_worker_with_other_versions_is_refused_in_words(small_slides, tiny, tmp_path):
    """Dask's own version check, with tumls-qp among the packages compared, quoted in the error."""
    other = LoopbackCluster(tmp_path)
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as scheduler:
        try:
            worker = other.start_worker("elsewhere", "--preload", str(PRELOAD_MISMATCH),
                                        scheduler=scheduler.scheduler_address)
            other.wait_for([worker], scheduler.scheduler_address)
            with pytest.raises(EngineError) as caught:
                analyze_on_dask(small_slides[:1], tmp_path / "out", tiny, scheduler=scheduler.scheduler_address)
            # The server does not start on such a cluster either.
            from tumls_qp.server.dask_runner import DaskRunner
            from tumls_qp.server.settings import ServerSettings

            runner = DaskRunner(ServerSettings(data_dir=tmp_path / "data", roots=(tmp_path,),
                                               scheduler=scheduler.scheduler_address))
            with pytest.raises(EngineError, match="do not run the same software as this client: tumls-qp differ"):
                runner.start()
        finally:
            other.stop()
    message = str(caught.value)
    assert "do not run the same software as this client: tumls-qp differ" in message
    assert "Mismatched versions found" in message and "0.0.1-elsewhere" in message  # Dask's table
    assert not (tmp_path / "out").exists()


# --- a local cluster (--workers) ------------------------------------------------------------------------------------------

def test_workers_give_the_run_folders_of_the_in_process_path(small_slides, tiny, tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(dump_config(tiny))
    common = [str(s) for s in small_slides[:2]] + ["--config", str(config), "--no-cache", "-q"]
    # In-process, in a fresh interpreter: Dask is never imported there.
    code = ("import sys\nfrom tumls_qp.cli import main\n"
            f"assert main(['analyze', *{common!r}, '--out', {str(tmp_path / 'local')!r}]) == 0\n"
            "print([m for m in ('dask', 'distributed') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"

    assert main(["analyze", *common, "--out", str(tmp_path / "dask"), "--workers", "2"]) == 0
    assert capsys.readouterr().out.count("(Dask worker tcp://127.0.0.1:") == 2
    assert _entries(tmp_path / "dask") == ["s0", "s1"]
    for name in ("s0", "s1"):
        local, dask = read_run(tmp_path / "local" / name), read_run(tmp_path / "dask" / name)
        assert local.manifest.engine.engine == "local" and local.manifest.engine.worker is None
        e = dask.manifest.engine
        assert e.engine == "dask" and e.scheduler.startswith("tcp://127.0.0.1:") and e.worker == e.model_worker
        assert e.worker.startswith("tcp://127.0.0.1:") and e.worker != e.scheduler
        assert dask.manifest.cohort is None and dask.manifest.tiles == local.manifest.tiles
        assert dask.k == local.k and np.array_equal(dask.tiles.boxes, local.tiles.boxes)
        # Same training, other CPU thread counts: the same tissues, uncertainties equal to rounding.
        assert np.array_equal(dask.tiles.tissue, local.tiles.tissue)
        np.testing.assert_allclose(dask.tiles.uncertainty, local.tiles.uncertainty, atol=5e-3)
        _assert_complete(dask.path)


# --- a cluster of real processes on loopback ------------------------------------------------------------------------------
# The tests below share one cluster, in this order; the last one kills a worker.

def test_a_slide_no_worker_can_read_names_the_worker_and_the_path(cluster, small_slides, tiny, tmp_path):
    missing = tmp_path / "elsewhere" / "gone.svs"
    with pytest.raises(InvalidInputError) as caught:
        analyze_on_dask([small_slides[0], missing], tmp_path / "out", tiny, scheduler=cluster.address)
    message = str(caught.value)
    for address in cluster.workers.values():
        assert f"the Dask worker {address} cannot find the slide {missing}" in message
    assert "storage that every worker mounts at the same place" in message
    assert str(small_slides[0]) not in message
    worker = cluster.workers["cpu"]
    with pytest.raises(EngineError, match=rf"{re.escape(worker)} is a Dask Worker, not the scheduler"):
        analyze_on_dask(small_slides[:1], tmp_path / "out", tiny, scheduler=worker)


def test_a_cohort_trains_once_on_the_gpu_worker_and_fans_out(cluster, small_slides, tiny, tmp_path):
    events = []
    results = analyze_on_dask(small_slides, tmp_path / "out", replace_in(tiny, **{"embedding.device": "auto"}),
                              scheduler=cluster.address, cohort=True,
                              progress=lambda stage, fraction, message: events.append((stage, fraction, message)))
    assert [r.run_dir.name for r in results] == ["s0", "s1", "s2"] and _entries(tmp_path / "out") == ["s0", "s1", "s2"]
    assert_one_cohort([r.run_dir for r in results])
    for r in results:
        e = r.manifest.engine
        assert (e.engine, e.scheduler, e.model_worker) == ("dask", cluster.address, cluster.workers["gpu"])
        assert e.worker in cluster.workers.values() and r.manifest.environment.device == "cpu"
        assert read_run(r.run_dir).manifest == r.manifest
        _assert_complete(r.run_dir)
    # One set of timings for the cohort, summed over its tasks, in every manifest.
    assert len({tuple(sorted(r.manifest.timings_s.items())) for r in results}) == 1
    assert {stage for stage, _, _ in events} == {PROGRESS_STAGE} and events[-1][1] == 1.0
    assert any("cohort: train" in m and cluster.workers["gpu"] in m for _, _, m in events)


def test_cuda_asked_for_and_absent_is_a_clear_error_from_the_worker(cluster, small_slides, tiny, tmp_path):
    with pytest.raises(DeviceError, match="--device cuda was asked for, but no CUDA device is available") as caught:
        analyze_on_dask(small_slides[:2], tmp_path / "out", replace_in(tiny, **{"embedding.device": "cuda"}),
                        scheduler=cluster.address, cohort=True)
    assert f"on the Dask worker {cluster.workers['gpu']}" in caught.value.__notes__
    assert _entries(tmp_path / "out") == []


def test_a_cohort_with_a_broken_slide_stops_and_leaves_nothing(cluster, small_slides, tiny, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a slide at all")
    with pytest.raises(SlideOpenError) as caught:
        analyze_on_dask([*small_slides[:2], broken], tmp_path / "out", tiny, scheduler=cluster.address, cohort=True)
    assert "broken.tif" in str(caught.value)
    assert any(note.startswith("on the Dask worker tcp://127.0.0.1:") for note in caught.value.__notes__)
    assert _entries(tmp_path / "out") == []  # no run folder, and the run's staging folder is gone


def test_the_server_hands_its_jobs_to_the_cluster(cluster, small_slides, tmp_path):
    """serve --scheduler: the job table and API as usual; the jobs run on the Dask workers; a cancel stops a job
    that runs there and removes its outputs."""
    pytest.importorskip("fastapi")
    from server_helpers import FAST_PARAMETERS, api_client, job_body, wait_for, wait_job

    from tumls_qp.server.app import create_app
    from tumls_qp.server.settings import ServerSettings

    settings = ServerSettings(data_dir=tmp_path / "data", roots=(small_slides[0].parent,), scheduler=cluster.address,
                              base_parameters={**FAST_PARAMETERS, "output": {"report": False}})
    with api_client(create_app(settings)) as client:
        wait_for(lambda: client.get("/health").json()["workers_alive"] == 2, 30, "the two Dask workers")
        long = client.post("/jobs", json=job_body(small_slides[2], parameters={
            "seed": 11, "embedding": {"max_epochs": 500, "patience": 500}})).json()
        jobs = [client.post("/jobs", json=job_body(s)).json() for s in small_slides[:2]]
        wait_for(lambda: client.get(f"/jobs/{long['id']}").json()["stage"] == "train", 60, "the long job to train")
        assert client.delete(f"/jobs/{long['id']}").json()["state"] == "cancelled"
        workers = set()
        for job in jobs:
            done = wait_job(client, job["id"])
            assert done["state"] == "succeeded", done
            run = read_run(Path(done["result"]["run_dir"]))
            e = run.manifest.engine
            assert (e.engine, e.scheduler) == ("dask", cluster.address) and e.worker in cluster.workers.values()
            workers.add(e.worker)
            assert validate_geojson(client.get(f"/jobs/{job['id']}/geojson").json()) == []
        wait_for(lambda: not list((settings.jobs_dir / long["id"]).glob("attempt-*")), 30, "the cancelled outputs to go")
        assert client.get(f"/jobs/{long['id']}").json()["state"] == "cancelled"
    assert not list(settings.jobs_dir.rglob("*.partial"))


def test_a_worker_killed_mid_slide_leaves_nothing_half_written(cluster, small_slides, tiny, tmp_path):
    """The worker analysing s0 is killed (SIGKILL) when it reports a training epoch (the first one a throttled event lets through): Dask runs s0 again on the other
    worker, nothing half-written is left, and the other slides are not disturbed."""
    victim: dict[str, str] = {}

    def kill_mid_slide(stage, fraction, message):
        found = re.match(r"s0: train, tumls-ae: \d+/\d+ \((tcp://[0-9.:]+)\)$", message)
        if found and not victim:
            [name] = [n for n, a in cluster.workers.items() if a == found.group(1)]
            cluster.kill(name)
            victim.update(name=name, address=found.group(1))

    out = tmp_path / "out"
    results = analyze_on_dask(small_slides, out, replace_in(tiny, **{"embedding.max_epochs": 4}),
                              scheduler=cluster.address, progress=kill_mid_slide)
    assert victim, "s0 never reached its first epoch"
    assert _entries(out) == ["s0", "s1", "s2"]  # the dead attempt's staging folder is gone too
    [survivor] = [a for n, a in cluster.workers.items() if n != victim["name"]]
    by_name = {r.run_dir.name: r for r in results}
    assert by_name["s0"].manifest.engine.worker == survivor
    for r in results:
        _assert_complete(r.run_dir)
        assert read_run(r.run_dir).manifest == r.manifest
    assert "Removing worker" in cluster.log("scheduler") or "Remove worker" in cluster.log("scheduler")
