"""The one place that names the files and folders of a model folder (RUN), for every layer.

::

    RUN/config.yaml                 resolved configuration
    RUN/model.json                  label map, preprocessing, domains, dataset, versions
    RUN/checkpoints/<name>.pt       last (full training state), best (the epoch the selection rule chose),
                                    ema (weight average), epoch_NNN[_ema] (with train.keep_epochs)
    RUN/selection.json              the selection rule, the checkpoint and epoch it chose, every epoch's score
    RUN/postprocessing.json         per checkpoint: the post-processing decided on the validation cases
    RUN/log.jsonl, RUN/log.csv      one row per epoch
    RUN/tensorboard/                TensorBoard event files (``train.loggers`` with ``tensorboard``)
    RUN/mlflow_run.json             the MLflow run the training logs to (``train.loggers`` with ``mlflow``)
    RUN/eval/<domain>_<split>_<checkpoint>/   metrics.csv, summary.json, qc.csv (``udavae evaluate``)
    RUN/report/                     figures (``udavae report``)
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CONFIG_FILE",
    "LOG_CSV",
    "LOG_JSONL",
    "MODEL_FILE",
    "POSTPROCESSING_FILE",
    "MLFLOW_RUN_FILE",
    "SELECTION_FILE",
    "TENSORBOARD_DIR",
    "checkpoint_file",
    "eval_folder",
    "is_model_folder",
    "report_folder",
]

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.json"
SELECTION_FILE = "selection.json"
POSTPROCESSING_FILE = "postprocessing.json"
LOG_JSONL = "log.jsonl"
LOG_CSV = "log.csv"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow_run.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"
REPORT_DIR = "report"


def checkpoint_file(run: str | Path, name: str) -> Path:
    """``RUN/checkpoints/<name>.pt`` (the name is not validated here: see ``engine.model_folder``)."""
    return Path(run) / CHECKPOINT_DIR / f"{name}.pt"


def eval_folder(run: str | Path, domain: str, split: str, checkpoint: str) -> Path:
    """Where ``udavae evaluate`` writes by default: ``RUN/eval/<domain>_<split>_<checkpoint>``.

    Refused (``UserError``) when the names would lead out of ``RUN/eval`` (a ``..`` or ``/`` in them).
    """
    from udavae.fileio import inside

    return inside(Path(run) / EVAL_DIR, f"{domain}_{split}_{checkpoint}")


def report_folder(run: str | Path) -> Path:
    """Where ``udavae report`` writes by default: ``RUN/report``."""
    return Path(run) / REPORT_DIR


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a model folder's description (``model.json`` and ``config.yaml``)."""
    p = Path(path)
    return (p / MODEL_FILE).is_file() and (p / CONFIG_FILE).is_file()
