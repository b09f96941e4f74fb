"""The CLI: errors are one readable line and exit code 2; a worker process settles its start-up heap."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import tiny_spec
from tunefleet.cli import main


def test_missing_spec_file_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["study", "create", str(tmp_path / "nope.yaml"), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunefleet: error: no such spec file")
    assert len(err.splitlines()) == 1


def test_unreachable_service_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "list", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the tunefleet service" in err
    assert len(err.splitlines()) == 1


def test_malformed_yaml_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["study", "create", str(bad), "--url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("tunefleet: error:")


def test_unknown_subcommand_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "tunefleet", "bogus"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_a_worker_keeps_its_start_up_objects_out_of_garbage_collection(tmp_path: Path) -> None:
    # Without the freeze, each full collection in a worker walks ~250k import-time objects again
    # (120-150 ms on 2 cores), stalling whatever claim or report it lands in.
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TUNEFLEET_LOG_LEVEL": "DEBUG",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--exit-when-idle"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frozen = re.search(r"(\d+) start-up objects kept out of garbage collection", result.stderr)
    assert frozen is not None, result.stderr
    assert int(frozen.group(1)) > 50_000


def _warm(tmp_path: Path, spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
    from studies import StudyRepository, StudySpec, open_storage

    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    repository.create(StudySpec.model_validate(spec))
    repository.engine.dispose()
    env = {**os.environ, "TUNEFLEET_DATABASE_URL": url, "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--warm-cache", "--study", str(spec["name"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_warm_cache_builds_a_head_studys_features_once(tmp_path: Path) -> None:
    result = _warm(tmp_path, tiny_spec("warm-head"))
    assert result.returncode == 0, result.stderr
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_warm_cache_leaves_a_last_k_study_alone(tmp_path: Path) -> None:
    # last-k and full studies run the encoder in every trial: features built here would never be read.
    result = _warm(
        tmp_path, tiny_spec("warm-last-k", task={"max_examples": 100, "finetune": "last-k", "k": 1})
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to warm" in result.stdout
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_warm_cache_builds_the_features_of_a_study_that_searches_head_among_modes(tmp_path: Path) -> None:
    # Its task says no mode; its head trials read the features, and the demo builds them here first.
    spec = tiny_spec("warm-searched", task={"max_examples": 100, "k": 1})
    spec["space"] = {**spec["space"], "finetune": ["head", "last-k"]}
    result = _warm(tmp_path, spec)
    assert result.returncode == 0, result.stderr
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    spec = tiny_spec("warm-encoder-only", task={"max_examples": 100})
    spec["space"] = {**spec["space"], "finetune": ["lora", "full"]}
    result = _warm(tmp_path / "encoder-only", spec)
    assert result.returncode == 0, result.stderr
    assert "nothing to warm: a lora or full study" in result.stdout


def test_warm_cache_says_a_python_study_has_nothing_to_warm(tmp_path: Path) -> None:
    spec = {
        "name": "warm-python",
        "task": {"kind": "python", "entrypoint": "mypkg.train:run"},
        "space": {"x": 1},
    }
    result = _warm(tmp_path, spec)
    assert result.returncode == 0, result.stderr
    assert "nothing to warm: a python study" in result.stdout


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tunefleet: error: ")
    return err.removeprefix("tunefleet: error: ")


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A process environment whose store, caches and artifacts are this test's own."""
    monkeypatch.setenv("TUNEFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("TUNEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNEFLEET_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    return tmp_path


@pytest.mark.parametrize("port", ["99999", "-1", "eighty"])
def test_serve_refuses_a_port_that_is_not_one(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", port])
    assert exit_.value.code == 2
    assert "argument --port" in capsys.readouterr().err


def test_a_bad_setting_names_its_variable(
    store_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # One line naming the variable, not pydantic's three-line dump ending in a link and naming the field.
    monkeypatch.setenv("TUNEFLEET_PORT", "70000")
    assert main(["serve"]) == 2
    assert (
        one_error_line(capsys) == "TUNEFLEET_PORT: Input should be less than or equal to 65535 (got '70000')"
    )
    monkeypatch.setenv("TUNEFLEET_POOL_SIZE", "-1")
    assert main(["worker"]) == 2
    assert one_error_line(capsys).startswith(
        "TUNEFLEET_POOL_SIZE: Input should be greater than or equal to 0"
    )


def test_a_settings_error_names_the_flag_given_and_never_echoes_a_store_url() -> None:
    from service import ServiceSettings
    from studies.startup import StartupError, build_settings

    with pytest.raises(StartupError) as flagged:
        build_settings(ServiceSettings, {"port": ("--port", 70000), "host": ("--host", None)})
    assert str(flagged.value).startswith("--port: ")
    with pytest.raises(StartupError) as secret:
        build_settings(ServiceSettings, {"database_url": ("--store", ["postgresql://u:hunter2@h/d"])})
    assert "hunter2" not in str(secret.value)


def test_serve_on_a_taken_port_is_one_line_and_never_says_it_serves(
    store_env: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Left to uvicorn, a taken port shows only after "serving on" is logged, and it exits 3 with its own line.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert one_error_line(capsys) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not [r for r in caplog.records if "serving on" in r.getMessage()]


def serving(tmp_path: Path, *, sigint_ignored: bool = False) -> tuple[subprocess.Popen[str], str]:
    """`tunefleet serve --port 0` on a SQLite store, and its "serving on" line once it has said it."""
    service = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "serve", "--port", "0"],
        env={**os.environ, "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
    )
    assert service.stderr is not None
    for line in service.stderr:
        if "serving on" in line:
            return service, line
    service.kill()
    service.wait()
    pytest.fail("the service never said where it serves")


def test_serve_stops_on_a_ctrl_c_sent_as_soon_as_it_says_it_serves(tmp_path: Path) -> None:
    # "serving on" was logged before uvicorn took SIGINT over: where the shell left SIGINT ignored (a background
    # job, which uvicorn still stops on), a Ctrl-C sent on that line was lost and the service ran on.
    service, _ = serving(tmp_path, sigint_ignored=True)
    try:
        service.send_signal(signal.SIGINT)
        assert service.wait(timeout=20) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()


def test_serve_on_port_0_says_the_port_it_got_and_serves_there(tmp_path: Path) -> None:
    service, line = serving(tmp_path)
    try:
        served = re.search(r"serving on http://127\.0\.0\.1:(\d+) ", line)
        assert served is not None, line
        port = int(served.group(1))
        assert port != 0
        # Said once it serves: the port answers at once.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        service.terminate()
        service.wait(timeout=20)


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("bogus", "device 'bogus' is not supported: use auto, cpu, cuda or cuda:N"),
        ("cuda:x", "device 'cuda:x' is not supported: use auto, cpu, cuda or cuda:N"),
        ("mps", "device 'mps' is not supported: use auto, cpu, cuda or cuda:N"),
        pytest.param(
            "cuda",
            "device 'cuda' asked for, but CUDA is not available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA"),
        ),
    ],
)
def test_a_worker_on_a_device_it_cannot_use_is_one_line(
    device: str, reason: str, store_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not a traceback (exit 1), which under `--gpus`/`--processes` the launcher would restart forever.
    assert main(["worker", "--device", device, "--exit-when-idle"]) == 2
    assert one_error_line(capsys) == reason


def test_a_worker_on_a_sqlite_file_it_cannot_create_is_one_line(
    store_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = store_env / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TUNEFLEET_DATABASE_URL", f"sqlite:///{blocked / 'store.db'}")
    assert main(["worker", "--exit-when-idle"]) == 2
    assert one_error_line(capsys).startswith(f"cannot open the store sqlite:///{blocked / 'store.db'}: ")


def test_a_worker_on_a_store_url_no_driver_reads_is_one_line_without_its_password(
    store_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNEFLEET_DATABASE_URL", "nosuchdb://user:hunter2@db-host/tunefleet")
    assert main(["worker", "--exit-when-idle"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("cannot open the store nosuchdb://user:***@db-host/tunefleet: ")
    assert "hunter2" not in line


def test_demo_refuses_a_port_it_could_not_find_again(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--port", "0"]) == 2
    assert one_error_line(capsys).startswith("--port 0 picks any free port")


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--max-trials", "0"],
        ["worker", "--max-trials", "-3"],
        ["worker", "--processes", "0"],
        ["demo", "--workers", "0"],
    ],
)
def test_counts_below_one_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # `worker --max-trials 0` exited 0 having run nothing; `demo --workers 0` created a study nothing would run.
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_a_worker_says_once_that_a_study_it_was_given_does_not_exist(store_env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--study", "no-such-study", "--exit-when-idle"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("study 'no-such-study' does not exist (yet): this worker waits for it") == 1


def test_a_health_check_gives_up_on_a_port_that_accepts_and_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With the client's 30 s request timeout, `tunefleet demo` on a port held by such a program would sit
    # silent for a minute (two checks) before saying why.
    from tunefleet.client import HEALTH_TIMEOUT_S, TunefleetClient

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = TunefleetClient(f"http://127.0.0.1:{silent.getsockname()[1]}")
        asked: list[object] = []
        get = client._http.get

        def recording_get(url: str, **kwargs: object) -> httpx.Response:
            asked.append(kwargs.get("timeout"))
            return get(url, timeout=0.2)

        monkeypatch.setattr(client._http, "get", recording_get)
        assert client.healthy() is False
    assert asked == [HEALTH_TIMEOUT_S]
    assert client._http.timeout.read is not None
    assert client._http.timeout.read > HEALTH_TIMEOUT_S


def test_study_create_takes_a_presets_name_as_the_demo_does(capsys: pytest.CaptureFixture[str]) -> None:
    # The spec is read (the next step, reaching the service, is what fails here), not "no such spec file".
    assert main(["study", "create", "tweets-sentiment-minilm", "--url", "http://127.0.0.1:9"]) == 2
    assert one_error_line(capsys).startswith("cannot reach the tunefleet service")
    assert main(["study", "create", "no-such-preset", "--url", "http://127.0.0.1:9"]) == 2
    assert one_error_line(capsys) == (
        "no such spec file: no-such-preset (or a preset: bbc-news-minilm, bbc-news-minilm-pareto, mlp-bbc-news,"
        " tweets-sentiment-minilm)"
    )


def test_study_show_says_what_warm_start_queued_and_each_trial_where_it_came_from() -> None:
    from tunefleet.study_cli import _show, _trial_line

    study = {
        "name": "bbc-june",
        "state": "running",
        "state_reason": None,
        "n_finished": 0,
        "n_trials": 10,
        "trial_counts": {"waiting": 2},
        "best_value": None,
        "best_trial": None,
        "dashboard_url": "http://127.0.0.1:8000/dashboard",
        "warm_start": {"sources": ["bbc-may", "bbc-april"], "trials": [{"number": 0}, {"number": 1}]},
        "warnings": ["warm start: bbc-april has no completed trials"],
    }
    shown = _show(study)
    assert "warm start 2 trials from bbc-may, bbc-april" in shown
    assert "warning    warm start: bbc-april has no completed trials" in shown
    trial = {"number": 0, "state": "waiting", "value": None, "params": {"depth": 1}, "user_attrs": {}}
    trial["user_attrs"] = {"enqueued": True, "warm_start_from": "bbc-may#17"}
    assert _trial_line(trial).endswith("[from bbc-may#17]")
    study["warm_start"] = {**study["warm_start"], "prior_configurations": 14}  # type: ignore[dict-item]
    assert "warm start 2 trials from bbc-may, bbc-april; a prior of 14 good configurations" in _show(study)
    trial["user_attrs"] = {"enqueued": True}
    assert _trial_line(trial).endswith("[enqueued]")
