"""Experiment tracking: every epoch's log row (and a few images) to TensorBoard and MLflow, beside ``log.csv``.

``train.loggers`` names the trackers. ``csv`` is the model folder's own ``log.csv`` / ``log.jsonl``, which the
trainer always writes; ``tensorboard`` writes event files to ``RUN/tensorboard/`` (every scalar of the row, and
per epoch one slice's input, label, predicted mask and reconstruction); ``mlflow`` logs the configuration as
params, the row as metrics and, at the end, the model folder as the artifact ``model``. Only process 0 tracks.

The trainer sees one object, :class:`Tracking`: ``on_epoch(row)`` after each epoch's checkpoint, ``finish()``
when training is complete and ``close()`` always. Both trackers continue a resumed run where the checkpoint
stopped: TensorBoard purges the events of the epochs after it, MLflow continues the same run (its id is kept in
``RUN/mlflow_run.json``) and logs only the epochs it lacks.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udavae.errors import UserError
from udavae.fileio import LOCK_FILE, is_temporary, read_json, write_json
from udavae.layout import MLFLOW_RUN_FILE, TENSORBOARD_DIR

#: Tracker -> (module that must be importable, the extra that installs it).
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
#: MLflow limits: params per ``log_batch`` call, characters of a param value.
_MLFLOW_BATCH, _MLFLOW_PARAM_CHARS = 100, 6000
#: RGB of the classes in mask images (background black); beyond the list, grey levels.
_PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240]],
    dtype=np.float32,
)


def require_loggers(loggers: Sequence[str]) -> None:
    """Raise :class:`UserError` naming the extra to install when a tracker's package is missing.

    Checked without importing the package, so planning a sweep stays fast.
    """
    for name in loggers:
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                raise UserError(
                    f"train.loggers includes {name}, but the {module} package is not installed: "
                    f"pip install 'udavae[{extra}]'"
                )


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log row that trackers record (every column but ``epoch``, which is their step)."""
    return {
        k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class Preview:
    """One slice shown every epoch: the input, its label (when it has one), the predicted mask, the reconstruction.

    Args:
        method: the method being trained (its ``net`` and ``reconstruct``).
        case: a loaded case (``LoadedCase``); the slice with the most foreground (else the middle one) is shown.
        domain: ``source`` or ``target``: which decoder reconstructs it.
        num_classes: K, for the mask colours.
        device: where the method lives.
    """

    def __init__(self, method: Any, case: Any, domain: str, num_classes: int, device: torch.device) -> None:
        from udavae.data.preprocessing import crop_or_pad

        z = case.image.shape[0]
        k = z // 2
        if case.label is not None:
            k = int(torch.argmax((case.label.reshape(z, -1) > 0).sum(1)))
        stride = int(getattr(method.net, "stride", 1))
        size = tuple(-(-s // stride) * stride for s in case.image.shape[-2:])
        self.image = crop_or_pad(case.image[k : k + 1].float(), size)
        self.label = crop_or_pad(case.label[k : k + 1], size) if case.label is not None else None
        self.method, self.domain, self.num_classes, self.device = method, domain, num_classes, device

    def _mask(self, classes: torch.Tensor) -> np.ndarray:
        c = classes.cpu().numpy().astype(np.int64)
        if self.num_classes <= len(_PALETTE):
            return _PALETTE[c] / 255.0
        return np.repeat((c / max(self.num_classes - 1, 1))[..., None], 3, axis=-1).astype(np.float32)

    @torch.no_grad()
    def __call__(self) -> dict[str, np.ndarray]:
        """``{name: H x W x 3 float image in [0, 1]}`` with the current weights (training mode restored)."""
        from udavae.data.sampling import multiscale

        method, was_training = self.method, self.method.training
        method.eval()
        try:
            x = self.image[:, None].to(self.device)
            pred = method.net(x, sample=False).logits.argmax(1)[0]
            recon = method.reconstruct(multiscale({"image": x}), self.domain)
        finally:
            method.train(was_training)
        gray = self.image[0].numpy()
        out = {"input": np.repeat(gray[..., None], 3, axis=-1), "prediction": self._mask(pred)}
        if self.label is not None:
            out["label"] = self._mask(self.label[0])
        if recon is not None:
            out["reconstruction"] = np.repeat(recon[0, 0].float().clamp(0, 1).cpu().numpy()[..., None], 3, axis=-1)
        return out


class TensorBoardTracker:
    """Scalars and images in ``RUN/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``), one step per epoch."""

    wants_images = True

    def __init__(self, run: Path, history: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Resumed: events from the checkpoint's epoch on are dropped and that epoch is logged again, so a run
        # killed between its checkpoint and its events neither lacks nor repeats an epoch.
        self.replay = history[-1:]
        self.writer = SummaryWriter(str(run / TENSORBOARD_DIR), purge_step=history[-1]["epoch"] if history else None)

    def on_epoch(self, row: dict[str, Any], images: dict[str, np.ndarray]) -> None:
        step = int(row["epoch"])
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        for name, image in images.items():
            self.writer.add_image(f"images/{name}", image, global_step=step, dataformats="HWC")
        self.writer.flush()

    def finish(self, run: Path) -> None:
        pass

    def close(self, status: str) -> None:
        self.writer.close()


def mlflow_tracking_uri(value: str, run: Path) -> str:
    """``train.mlflow_uri`` as a URI: empty = the file store ``mlruns/`` beside the model folder; a path = its
    file store; anything with a scheme (``sqlite:///mlflow.db``, ``http://host:5000``) as given."""
    if not value:
        return (run.resolve().parent / "mlruns").as_uri()
    if "://" in value or value.startswith(("file:", "databricks")):
        return value
    return Path(value).expanduser().resolve().as_uri()


class MLflowTracker:
    """Params, per-epoch metrics and the model folder in an MLflow run (``MlflowClient``; no global state).

    The experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``udavae``; the run is named after the model folder.
    """

    wants_images = False

    def __init__(self, run: Path, uri: str, history: list[dict[str, Any]], params: dict[str, Any]) -> None:
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and asks for this opt-in; it still reads and
            # writes it, and `mlflow ui --backend-store-uri mlruns` shows it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client, self.uri, self.record = MlflowClient(tracking_uri=uri), uri, run / MLFLOW_RUN_FILE
        self.run_id, logged = self._continued(MlflowException)
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "udavae"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            tags = {"udavae.model_folder": str(run.resolve())}
            self.run_id = self.client.create_run(exp_id, run_name=run.name, tags=tags).info.run_id
            write_json(self.record, {"tracking_uri": uri, "run_id": self.run_id, "experiment_id": exp_id})
            self._log_params(params)
        self.replay = [row for row in history if row["epoch"] > logged]

    def _continued(self, error: type[Exception]) -> tuple[str | None, int]:
        """(run id, last epoch it has) of the run this model folder logged to before; (None, 0) if none."""
        if not self.record.is_file():
            return None, 0
        try:
            rec = read_json(self.record, "MLflow run record")
            if rec.get("tracking_uri") != self.uri:
                return None, 0
            run_id = str(rec["run_id"])
            self.client.update_run(run_id, status="RUNNING")
            steps = [m.step for m in self.client.get_metric_history(run_id, "lr")]
        except (UserError, KeyError, TypeError, AttributeError, error):
            return None, 0
        return run_id, max(steps, default=0)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        text = {k: ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for k, v in params.items()}
        items = [Param(k, v[:_MLFLOW_PARAM_CHARS]) for k, v in text.items()]
        for i in range(0, len(items), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MLFLOW_BATCH])

    def on_epoch(self, row: dict[str, Any], images: dict[str, np.ndarray]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(k, v, now, step) for k, v in scalars(row).items() if math.isfinite(v)]
        for i in range(0, len(metrics), _MLFLOW_BATCH * 10):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MLFLOW_BATCH * 10])

    def finish(self, run: Path) -> None:
        """Log the model folder as the artifact ``model`` (all but the lock and temporary files)."""
        for f in sorted(run.rglob("*")):
            if f.is_file() and f.name != LOCK_FILE and not is_temporary(f.name):
                rel = f.parent.relative_to(run)
                self.client.log_artifact(self.run_id, str(f), "model" if rel == Path() else f"model/{rel.as_posix()}")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class Tracking:
    """The trackers of one training run, as the trainer calls them (process 0 only).

    Args:
        trackers: the open trackers (none for ``csv`` alone).
        preview: makes the per-epoch images; called only when a tracker wants images.
    """

    def __init__(self, trackers: list[Any], preview: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        self.trackers, self.preview, self.finished = trackers, preview, False
        for t in trackers:  # resumed: the epochs a tracker lacks (the weights are the last one's: its images)
            for i, row in enumerate(t.replay):
                t.on_epoch(row, self._images([t]) if i == len(t.replay) - 1 else {})

    def _images(self, trackers: list[Any]) -> dict[str, np.ndarray]:
        if self.preview is None or not any(t.wants_images for t in trackers):
            return {}
        return self.preview()

    def _call(self, what: str, call: Callable[[Any], None]) -> None:
        """Call every tracker; one that fails (a tracking server gone...) is dropped with a warning, and the
        training goes on: its scores stay in ``log.csv``."""
        for t in list(self.trackers):
            try:
                call(t)
            except Exception as exc:  # a tracker must never end a training
                self.trackers.remove(t)
                print(f"warning: {type(t).__name__} failed to {what} ({exc}); it logs no more", file=sys.stderr)

    def on_epoch(self, row: dict[str, Any]) -> None:
        """Record one finished epoch's log row (after its checkpoint is written)."""
        images = self._images(self.trackers)
        self._call("log an epoch", lambda t: t.on_epoch(row, images if t.wants_images else {}))

    def finish(self, run: Path) -> None:
        """Training is complete: upload what the trackers keep of the model folder."""
        self._call("store the model folder", lambda t: t.finish(run))
        self.finished = True

    def close(self) -> None:
        """Close every tracker; called in a ``finally``, it marks an MLflow run FAILED / KILLED when an exception
        is propagating and :meth:`finish` was not reached."""
        exc = sys.exc_info()[0]
        status = "FINISHED" if self.finished else "KILLED" if exc is KeyboardInterrupt else "FAILED"
        self._call("close", lambda t: t.close(status))


def open_tracking(
    cfg: Any,
    run: Path,
    history: list[dict[str, Any]],
    method: Any,
    data: Any,
    device: torch.device,
    world_size: int = 1,
) -> Tracking:
    """The trackers ``cfg.train.loggers`` asks for, opened on model folder ``run`` (resumed after ``history``).

    Args:
        cfg: the run's configuration.
        run: the model folder (already holding ``config.yaml``).
        history: the log rows of the epochs already trained (empty for a new run).
        method: the method (for the preview images).
        data: the trainer's ``TrainData`` (the preview slice: a target validation case, else a label-free one,
            else a held-out source case).
        device: the method's device.
        world_size: processes training together (recorded with the params).
    """
    from udavae.dotted import flatten

    loggers = cfg.train.loggers
    require_loggers(loggers)
    trackers: list[Any] = []
    if "tensorboard" in loggers:
        trackers.append(TensorBoardTracker(run, history))
    if "mlflow" in loggers:
        params = {
            **flatten(cfg.to_dict()),
            "dist.world_size": world_size,
            "dist.effective_batch": cfg.optim.batch_size * world_size,
        }
        trackers.append(MLflowTracker(run, mlflow_tracking_uri(cfg.train.mlflow_uri, run), history, params))
    preview = None
    if any(t.wants_images for t in trackers):
        for cases, domain in (
            (data.val_cases, "target"),
            (data.labelfree_cases, "target"),
            (data.holdout_cases, "source"),
        ):
            if cases:
                preview = Preview(method, cases[0], domain, data.spec.labels.num_classes, device)
                break
    return Tracking(trackers, preview)
