"""``train.loggers``: TensorBoard event files and the MLflow store hold what ``log.csv`` holds, resumed runs continue
them without gaps or repeats, and a missing extra is named before anything trains."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from udavae.cli import main
from udavae.config import build_config
from udavae.data.synthetic import generate_dataset
from udavae.engine import tracking
from udavae.engine.trainer import train
from udavae.errors import UserError
from udavae.evaluation.runs import find_model_folders


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, n_source=3, n_target=4, size=48, slices=3, seed=2, n_val=1)
    return root


def _csv_columns(run: Path) -> dict[str, list[tuple[int, float]]]:
    """log.csv as {column: [(epoch, value), ...]} for every numeric column but ``epoch``."""
    with (run / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for k, v in row.items():
            if k != "epoch" and v != "":
                cols.setdefault(k, []).append((int(row["epoch"]), float(v)))
    return cols


def _tensorboard_scalars(run: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [e.step for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


def _mlflow(run: Path):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    record = json.loads((run / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == (run.resolve().parent / "mlruns").as_uri()  # beside the model folder
    return MlflowClient(tracking_uri=record["tracking_uri"]), record["run_id"]


def _assert_same_series(got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]]) -> None:
    assert set(got) == set(want)
    for tag, series in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in series], tag
        # log.csv keeps 6 significant digits, TensorBoard float32
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in series], rel=1e-5, abs=1e-12), tag


def test_tensorboard_and_mlflow_hold_every_logged_scalar(
    tmp_path: Path, dataset: Path, tiny_overrides: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tracking-test")
    cfg = build_config(
        "udavae++", "tiny", {**tiny_overrides, "data.dataset": str(dataset), "train.loggers": "csv,tensorboard,mlflow"}
    )
    run = tmp_path / "runs" / "r1"
    train(cfg, run)
    want = _csv_columns(run)
    assert {"loss/total", "lr", "images_per_s", "val/dice_mean", "lf/agreement", "selected_epoch"} <= set(want)

    scalars, images = _tensorboard_scalars(run)
    _assert_same_series(scalars, want)
    # one slice per epoch: input, its label, the predicted mask and (UDA-VAE++ has decoders) the reconstruction
    assert images == {f"images/{n}": [1, 2] for n in ("input", "label", "prediction", "reconstruction")}

    client, run_id = _mlflow(run)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "r1"
    assert client.get_experiment(got.info.experiment_id).name == "tracking-test"
    params = got.data.params
    assert params["optim.lr"] == "0.001" and params["model.base_width"] == "4" and params["preset"] == "udavae++"
    assert params["train.loggers"] == "csv,tensorboard,mlflow" and params["dist.effective_batch"] == "2"
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in got.data.metrics}
    _assert_same_series(history, want)
    artifacts = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/config.yaml", "model/model.json", "model/log.csv", "model/checkpoints"} <= artifacts
    stored = Path(client.download_artifacts(run_id, "model/config.yaml", str(tmp_path / "dl")))
    assert stored.read_bytes() == (run / "config.yaml").read_bytes()
    assert "model/.lock" not in artifacts
    # the artifact is a copy of the model folder, which `udavae compare` must not count as another run
    assert (tmp_path / "runs" / "mlruns").is_dir() and find_model_folders(tmp_path / "runs") == [run]


def test_resumed_run_continues_both_trackers(
    tmp_path: Path,
    dataset: Path,
    udavae_killed_after,
    tiny_overrides: dict,  # noqa: ANN001
) -> None:
    """Killed in epoch 2 (after epoch 1's checkpoint), then resumed: each epoch once in each tracker, one MLflow run."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path / "r"
    tiny = [f"{k}={v}" for k, v in tiny_overrides.items()]
    args = ["train", "--dataset", str(dataset), "--out", str(run), "--preset", "udavae++", "--profile", "tiny", *tiny]
    args.append("train.loggers=tensorboard,mlflow")
    r = udavae_killed_after(3, *args)
    assert r.returncode == 137, r.stderr[-2000:]
    client, run_id = _mlflow(run)
    assert [m.step for m in client.get_metric_history(run_id, "loss/total")] == [1]
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: never marked finished

    assert main([*args, "--resume"]) == 0
    want = _csv_columns(run)
    assert [e for e, _ in want["loss/total"]] == [1, 2]
    scalars, images = _tensorboard_scalars(run)
    _assert_same_series(scalars, want)
    assert images["images/prediction"] == [1, 2]
    client, again = _mlflow(run)
    assert again == run_id and client.get_run(run_id).info.status == "FINISHED"
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in want}
    _assert_same_series(history, want)


def test_missing_extra_is_named_before_training(
    tmp_path: Path, dataset: Path, tiny_overrides: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "mlflow") else real(name)
    )
    for logger in ("tensorboard", "mlflow"):
        cfg = build_config("noadapt", "tiny", {**tiny_overrides, "data.dataset": str(dataset), "train.loggers": logger})
        with pytest.raises(UserError, match=rf"pip install 'udavae\[{logger}\]'"):
            train(cfg, tmp_path / logger)
        assert not (tmp_path / logger).exists()  # refused before the model folder is made
    tracking.require_loggers(["csv"])  # csv needs nothing


def test_loggers_key_parsing_and_validation(tiny_overrides: dict) -> None:
    cfg = build_config("noadapt", "tiny", {"train.loggers": "[csv, tensorboard]"})
    assert cfg.train.loggers == ["csv", "tensorboard"]
    # a YAML list in a grid file's overrides reaches the key as the string "['csv', 'mlflow']"
    assert build_config("noadapt", "tiny", {"train.loggers": "['csv', 'mlflow']"}).train.loggers == ["csv", "mlflow"]
    assert build_config("noadapt", "tiny").train.loggers == ["csv"]
    with pytest.raises(ValueError, match="unknown logger.*wandb.*choose from csv, tensorboard, mlflow"):
        build_config("noadapt", "tiny", {"train.loggers": "csv,wandb"})
    with pytest.raises(ValueError, match="lists a logger twice"):
        build_config("noadapt", "tiny", {"train.loggers": "mlflow,mlflow"})


def test_mlflow_uri_forms(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    assert tracking.mlflow_tracking_uri("", run) == (tmp_path / "runs" / "mlruns").resolve().as_uri()
    assert tracking.mlflow_tracking_uri(str(tmp_path / "store"), run) == (tmp_path / "store").resolve().as_uri()
    for uri in ("sqlite:///mlflow.db", "http://tracking:5000", "file:///data/mlruns"):
        assert tracking.mlflow_tracking_uri(uri, run) == uri


def test_a_failing_tracker_is_dropped_and_training_goes_on(capsys: pytest.CaptureFixture) -> None:
    class Broken:
        wants_images, replay = False, []

        def on_epoch(self, row: dict, images: dict) -> None:
            raise ConnectionError("tracking server unreachable")

    class Recorder:
        wants_images, replay = True, [{"epoch": 1, "lr": 0.1}]

        def __init__(self) -> None:
            self.rows: list[tuple[int, list[str]]] = []
            self.closed = ""

        def on_epoch(self, row: dict, images: dict) -> None:
            self.rows.append((row["epoch"], sorted(images)))

        def finish(self, run: Path) -> None:
            pass

        def close(self, status: str) -> None:
            self.closed = status

    rec = Recorder()
    t = tracking.Tracking([Broken(), rec], preview=lambda: {"input": None})
    t.on_epoch({"epoch": 2, "lr": 0.09})
    t.on_epoch({"epoch": 3, "lr": 0.08})
    assert rec.rows == [(1, ["input"]), (2, ["input"]), (3, ["input"])]  # the replayed epoch first
    assert "Broken failed to log an epoch (tracking server unreachable)" in capsys.readouterr().err
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        t.close()
    assert rec.closed == "KILLED"
    t.finish(Path("."))
    t.close()
    assert rec.closed == "FINISHED"
    assert tracking.scalars({"epoch": 3, "lr": 0.1, "selected_epoch": 2, "ok": True, "note": "x"}) == {
        "lr": 0.1,
        "selected_epoch": 2.0,
    }
