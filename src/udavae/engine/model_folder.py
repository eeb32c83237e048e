"""The self-contained model folder (RUN) and its checkpoints.

Layout (everything ``evaluate`` / ``predict`` / ``report`` need, nothing else)::

    RUN/config.yaml            resolved configuration (method, architecture, schedule, seed)
    RUN/model.json             label map, preprocessing, domains, dataset, class names, versions
    RUN/checkpoints/last.pt    full training state (model, optimisers, RNG, epoch, best score)
    RUN/checkpoints/best.pt    weights of the epoch the selection rule chose (train.selection)
    RUN/checkpoints/ema.pt     moving average of the weights at the last epoch (train.ema)
    RUN/checkpoints/epoch_NNN[_ema].pt   every epoch's weights (train.keep_epochs)
    RUN/selection.json         the selection rule, the checkpoint and epoch it chose, every epoch's score
    RUN/log.jsonl, log.csv     one row per epoch (losses, lr, validation Dice, time)
    RUN/postprocessing.json    per checkpoint: structures that keep only their largest component, decided on
                               the validation cases at the end of training (or by ``udavae postprocess``)

Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from udavae.config import Config
from udavae.data.preprocessing import Preprocessing
from udavae.data.spec import LabelMap
from udavae.errors import UserError
from udavae.evaluation.postprocess import PostProcessing
from udavae.fileio import (
    LOCK_FILE,
    SAFE_NAME_RULE,
    atomic_path,
    is_safe_name,
    is_temporary,
    read_json,
    write_json,
    write_text,
)
from udavae.layout import CONFIG_FILE, MODEL_FILE, POSTPROCESSING_FILE, SELECTION_FILE, checkpoint_file
from udavae.methods import UDAMethod, build_method
from udavae.version import __version__

#: The checkpoint name meaning "the one ``selection.json`` names" (``best`` in folders without it).
SELECTED = "selected"
CHECKPOINTS = ("best", "last", "ema")
#: Names of checkpoints: the three above and, with ``train.keep_epochs``, ``epoch_NNN`` / ``epoch_NNN_ema``.
_CHECKPOINT_RE = re.compile(r"^(best|last|ema|epoch_\d{3}(_ema)?)$")


def checkpoint_path(run: Path, which: str) -> Path:
    """``RUN/checkpoints/<which>.pt`` (``which``: best, last, ema, epoch_NNN or epoch_NNN_ema)."""
    if not _CHECKPOINT_RE.match(which):
        raise UserError(
            f"checkpoint must be one of {', '.join(CHECKPOINTS)}, epoch_NNN or epoch_NNN_ema, got {which!r}"
        )
    return checkpoint_file(run, which)


def selection_path(run: Path) -> Path:
    """``RUN/selection.json``."""
    return Path(run) / SELECTION_FILE


def write_selection(run: Path, record: dict[str, Any]) -> None:
    """Record the selection (rule, chosen checkpoint and epoch, scores) atomically."""
    write_json(selection_path(run), record)


def read_selection(run: str | Path) -> dict[str, Any] | None:
    """The selection record of a model folder, or None (folders trained before selection rules)."""
    path = selection_path(Path(run))
    if not path.is_file():
        return None
    record = read_json(path, what="selection record")
    if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str):
        raise UserError(f"{path} is corrupt: it names no checkpoint")
    return record


def resolve_checkpoint(run: str | Path, name: str) -> str:
    """``selected`` -> the checkpoint ``selection.json`` names (``best`` without one); other names unchanged."""
    if name != SELECTED:
        return name
    record = read_selection(run)
    return record["checkpoint"] if record else "best"


def epoch_checkpoint(epoch: int, ema: bool = False) -> str:
    """The name of epoch ``epoch``'s kept weights (``train.keep_epochs``): ``epoch_007`` / ``epoch_007_ema``."""
    return f"epoch_{epoch:03d}" + ("_ema" if ema else "")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, so a kill never leaves a truncated checkpoint.

    A write that fails (disk full, file size limit) is one error naming the checkpoint; torch reports it as a
    ``RuntimeError`` such as ``unexpected pos``, which names nothing. The previous checkpoint stays intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or ["write failed"])[-1]
            raise UserError(
                f"cannot write checkpoint {path}: {reason} (is the disk full, or a file size limit "
                "set?); the checkpoint there (if any) is unchanged"
            ) from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with an error naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        # weights_only: tensors and plain containers only; a pickled object can never run code here.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests turning weights-only loading off; name only what was refused
        # (e.g. "GLOBAL posix.system").
        what = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln), "")
        raise UserError(
            f"checkpoint {path} holds Python objects other than weights and plain data and is refused, "
            "as loading them could run code (not a udavae checkpoint, or altered)" + (f": {what}" if what else "")
        ) from None
    except Exception as exc:  # pickle / zip errors come in many types
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc})") from None


@dataclass
class ModelInfo:
    """What ``model.json`` records beside the config."""

    labels: LabelMap
    preprocessing: Preprocessing
    dataset_name: str
    dataset_path: str
    source: str
    target: str

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "udavae_version": __version__,
            "torch_version": torch.__version__,
            "dataset": {"name": self.dataset_name, "path": self.dataset_path},
            "source": self.source,
            "target": self.target,
            "labels": self.labels.to_dict(),
            "class_names": {str(k): v for k, v in self.labels.class_names.items()},
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        """Read :meth:`to_dict`'s form, checking every field's type and that the domain names are safe names.

        Raises:
            KeyError / TypeError / ValueError: a missing or malformed field (callers name the file).
        """
        if not isinstance(d, dict):
            raise TypeError(f"the top level must be an object, got {type(d).__name__}")
        for key, kind in (
            ("labels", dict),
            ("preprocessing", dict),
            ("dataset", dict),
            ("source", str),
            ("target", str),
        ):
            if not isinstance(d[key], kind):
                raise TypeError(f"{key!r} must be {'an object' if kind is dict else 'a string'}, got {d[key]!r}")
        dataset = d["dataset"]
        if not isinstance(dataset.get("name"), str) or not isinstance(dataset.get("path"), str):
            raise TypeError("'dataset' must hold the strings 'name' and 'path'")
        for key in ("source", "target"):
            if not is_safe_name(d[key]):
                raise ValueError(f"{key} domain {d[key]!r} is not a safe name ({SAFE_NAME_RULE})")
        return cls(
            labels=LabelMap.from_dict(d["labels"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            dataset_name=dataset["name"],
            dataset_path=dataset["path"],
            source=d["source"],
            target=d["target"],
        )


def write_model_folder(run: Path, cfg: Config, info: ModelInfo) -> None:
    """Write ``config.yaml`` and ``model.json``."""
    write_text(run / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(run / MODEL_FILE, info.to_dict())


def read_model_folder(run: str | Path) -> tuple[Config, ModelInfo]:
    """Read the config and model description of a model folder, with clear errors."""
    run = Path(run)
    if run.is_file():
        raise UserError(
            f"{run} is a file, not a model folder: this needs the folder 'udavae train' wrote (a model zip of "
            "'udavae export' works with predict, evaluate, export, model info and udavae.load)"
        )
    if not run.is_dir():
        raise UserError(f"model folder {run} not found")
    cfg_path = run / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{run} is not a udavae model folder ({CONFIG_FILE} missing)")
    try:
        raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        cfg = Config.from_dict(raw)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{cfg_path} is corrupt: {exc}") from None
    d = read_json(run / MODEL_FILE, what="model description")
    try:
        info = ModelInfo.from_dict(d)
    except KeyError as exc:
        raise UserError(f"{run / MODEL_FILE} is corrupt: the key {exc} is missing") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{run / MODEL_FILE} is corrupt: {exc}") from None
    return cfg, info


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a model folder udavae wrote: a ``model.json`` object naming a udavae version."""
    f = Path(path) / MODEL_FILE
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "udavae_version" in d


#: Files another part of udavae may put into a run folder before ``train`` does (a sweep's record of the run).
_PRE_TRAIN_FILES = {"sweep_run.json", LOCK_FILE}


def _left_by_udavae(p: Path) -> bool:
    """A file a sweep or a killed ``train`` may leave in a run folder before any checkpoint exists."""
    if p.name in _PRE_TRAIN_FILES or is_temporary(p.name):
        return True
    return p.name == "checkpoints" and p.is_dir() and all(is_temporary(q.name) for q in p.iterdir())


def check_new_run_folder(run: str | Path) -> None:
    """Refuse to train into a folder that holds anything but an earlier (unfinished) udavae run.

    ``train`` writes ``config.yaml``, ``model.json``, ``log.csv``... into its folder: a folder holding a user's
    files under those names would be overwritten. Empty, new and udavae run folders are accepted (a run with a
    checkpoint is refused by the trainer itself: it needs ``--resume``).
    """
    run = Path(run)
    if not run.exists():
        return
    if not run.is_dir():
        raise UserError(f"--out {run} exists and is not a folder")
    others = sorted(p.name for p in run.iterdir() if not _left_by_udavae(p))
    if others and not is_run_folder(run):
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise UserError(
            f"--out {run} is not empty ({shown}) and is not a udavae model folder (no {MODEL_FILE} "
            "written by udavae); training would overwrite files there: choose a new or empty folder"
        )


def load_trained(
    run: str | Path, checkpoint: str = SELECTED, device: str | torch.device = "cpu"
) -> tuple[Config, ModelInfo, UDAMethod, dict]:
    """Rebuild the trained method of a model folder, weights loaded, in eval mode.

    Returns:
        (config, model info, method, checkpoint dict).
    """
    run = Path(run)
    cfg, info = read_model_folder(run)
    checkpoint = resolve_checkpoint(run, checkpoint)
    path = checkpoint_path(run, checkpoint)
    if checkpoint == "best" and not path.is_file() and checkpoint_path(run, "last").is_file():
        raise UserError(f"{path} not found: no validated epoch yet; use --checkpoint last")
    state = load_checkpoint(path, map_location=device)
    method = build_method(cfg, info.num_classes)
    try:
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{path} does not match the model in {run / CONFIG_FILE}: {exc}") from None
    method.to(device).eval()
    return cfg, info, method, state


def save_postprocessing(run: Path, checkpoint: str, pp: PostProcessing) -> None:
    """Record the post-processing decided for ``checkpoint`` in ``RUN/postprocessing.json`` (atomically)."""
    checkpoint_path(run, checkpoint)  # validates the name
    path = run / POSTPROCESSING_FILE
    decisions = read_json(path, what="post-processing file") if path.is_file() else {}
    decisions[checkpoint] = pp.to_dict()
    write_json(path, decisions)


def load_postprocessing(run: str | Path, checkpoint: str) -> PostProcessing | None:
    """The post-processing decided for ``checkpoint``, or None if none was decided (older model folders)."""
    path = Path(run) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    decisions = read_json(path, what="post-processing file")
    entry = decisions.get(checkpoint) if isinstance(decisions, dict) else None
    if entry is None:
        return None
    try:
        return PostProcessing.from_dict(entry)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None


@dataclass
class TrainedModel:
    """A model folder loaded for inference: what ``evaluate`` (:func:`udavae.evaluation.run.evaluate_run`),
    ``predict`` and ``report`` use.

    Attributes:
        run: the model folder, as given.
        checkpoint: ``best`` or ``last``.
        config / info: its ``config.yaml`` and ``model.json``.
        method: the trained method, weights loaded, in eval mode.
        state: the checkpoint dict (``epoch``...).
        predictor: whole-volume inference with the method's network.
        source: the model zip it was loaded from (``run`` is then a temporary folder it was extracted into,
            removed with this object), or None.
    """

    run: Path
    checkpoint: str
    config: Config
    info: ModelInfo
    method: torch.nn.Module
    state: dict[str, Any]
    predictor: Any
    source: Path | None = None
    archive: Any = field(default=None, repr=False)  # keeps the extracted folder of a zip alive

    @property
    def epoch(self) -> int | None:
        """The epoch the checkpoint was saved after (None if it does not say)."""
        return self.state.get("epoch")

    def postprocessing(self) -> PostProcessing | None:
        """The post-processing decided for this checkpoint (None if none was)."""
        return load_postprocessing(self.run, self.checkpoint)


def open_model(
    run: str | Path,
    checkpoint: str = SELECTED,
    device: str | torch.device = "auto",
    batch_size: int = 16,
    amp: str | None = None,
) -> TrainedModel:
    """Load a model folder or a model zip and a predictor for it (``amp`` None: the precision the model trained in).

    A model zip (``udavae export``) is verified and extracted into a temporary model folder first
    (:func:`udavae.export.archive.open_model_zip`, the one place zips are read); ``checkpoint`` ``selected``
    then means the weights it holds.

    Args:
        run: the model folder, or a model zip.
        checkpoint: ``selected``, ``best``, ``last``, ``ema`` or a kept ``epoch_NNN``.
        device: ``auto``, ``cpu``, ``cuda``... or a ``torch.device``.
        batch_size: slices per forward pass.
        amp: ``none``, ``bf16`` or ``fp16`` for inference; None: the model's ``runtime.amp``.
    """
    from udavae.engine.inference import Predictor
    from udavae.engine.runtime import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    source = archive = None
    if Path(run).is_file():
        from udavae.export.archive import open_model_zip

        archive = open_model_zip(run, checkpoint)
        source, run, checkpoint = Path(run), archive.folder, archive.checkpoint
    try:
        checkpoint = resolve_checkpoint(run, checkpoint)
        cfg, info, method, state = load_trained(run, checkpoint, dev)
    except BaseException:
        if archive is not None:
            archive.close()
        raise
    predictor = Predictor(method.net, info.preprocessing, dev, batch_size=batch_size, amp=amp or cfg.runtime.amp)
    return TrainedModel(Path(run), checkpoint, cfg, info, method, state, predictor, source, archive)
