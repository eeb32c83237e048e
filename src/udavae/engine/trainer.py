"""The one trainer every method plugs into.

Per step: a source batch and a target batch (fixed iterations per epoch, the shorter domain cycled) go
through the method's own :meth:`~udavae.methods.base.UDAMethod.training_step` with the optimisers of its
:meth:`~udavae.methods.base.UDAMethod.configure_optimizers` (the default: one backward of the total, the
critic optimiser steps, then the main one, the published code's order). Per epoch: every param group's
lr = its base lr * decay**epoch, validation Dice on the target validation split (never the test split), a
log row, and an atomic checkpoint holding everything needed to resume exactly. The best-on-validation
weights are kept separately.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from udavae.augment import SourceAugmenter
from udavae.augment.crop import CropAugment
from udavae.config import Config, DataConfig
from udavae.data.preprocessing import Preprocessing
from udavae.data.sampling import SliceCropDataset, make_loader
from udavae.data.spec import DatasetSpec
from udavae.data.volumes import LoadedCase, SliceStack, load_cases
from udavae.engine import model_folder as mf
from udavae.engine.ema import WeightAverage
from udavae.engine.evaluate import validation_dice
from udavae.engine.inference import Predictor
from udavae.engine.labelfree import case_scores, summarize_scores
from udavae.engine.runtime import (
    autocast,
    barrier,
    compile_module,
    configure_backends,
    describe_world,
    init_distributed,
    loader_workers,
    seed_everything,
    shutdown_distributed,
    slow_amp_warning,
    uses_cudagraphs,
    validation_batch,
)
from udavae.engine.selection import Selector, first_eligible_epoch, resolve_rule
from udavae.engine.step import batch_to_device, load_optimizer_state, optimisation_step, remember_base_lr
from udavae.engine.tracking import open_tracking, require_loggers
from udavae.errors import DataError, UserError
from udavae.evaluation.labelfree import CardiacRoles
from udavae.fileio import FolderLock, ensure_writable_dir, remove_stale_temporaries, write_text
from udavae.layout import LOG_CSV, LOG_JSONL
from udavae.methods import build_method


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass
class TrainData:
    """Everything the loop reads: crop datasets and the loaded cases scored every epoch.

    Attributes:
        val_cases: the target's labelled validation cases (empty when the target has none).
        labelfree_cases: target cases of the training pool scored without labels every epoch.
        holdout_cases: labelled source cases held out of training (source Dice every epoch).
    """

    source: SliceCropDataset
    target: SliceCropDataset
    val_cases: list[LoadedCase]
    spec: DatasetSpec
    prep: Preprocessing
    source_cases: list[str] = field(default_factory=list)
    target_cases: list[str] = field(default_factory=list)
    labelfree_cases: list[LoadedCase] = field(default_factory=list)
    holdout_cases: list[LoadedCase] = field(default_factory=list)

    @property
    def has_val(self) -> bool:
        """Whether the target has labelled validation cases (then ``val-dice`` selection is possible)."""
        return bool(self.val_cases)


def _target_validation(spec: DatasetSpec, cfg: Config) -> list:
    """The target's labelled validation cases; [] when the target has no ``val`` split (label-free selection).

    A split named by a non-default ``data.val_split`` must exist (a typo never turns selection label-free).
    """
    d = cfg.data
    tgt_splits = spec.splits.get(d.target, {})
    if d.val_split not in tgt_splits:
        if d.val_split != DataConfig.val_split:
            raise DataError(
                f"dataset {spec.name!r}: target domain {d.target!r} has no {d.val_split!r} split "
                f"(splits: {', '.join(tgt_splits) or 'none'}); without data.val_split a target with no "
                "'val' split is selected on label-free scores"
            )
        return []
    val = spec.split(d.target, d.val_split)
    if any(c.label is None for c in val):
        raise DataError(
            f"dataset {spec.name!r}: validation split {d.target}/{d.val_split} lists cases without "
            "labels; remove the split for an unlabelled target, or add the labels"
        )
    return val


def _seeded_pick(items: list, n: int, seed: int) -> list:
    """``n`` items of ``items`` chosen by ``seed`` (in their original order)."""
    if n >= len(items):
        return list(items)
    keep = set(np.random.default_rng(seed).choice(len(items), size=n, replace=False).tolist())
    return [x for i, x in enumerate(items) if i in keep]


def prepare_data(cfg: Config) -> TrainData:
    """Resolve the source / target pools, the validation cases and the label-free set, and load them once.

    The target's labels are read only for its validation split; a target without labels trains all the same
    (selection then follows a label-free rule, ``udavae.engine.selection``).

    Raises:
        DataError: missing dataset, domain or source labels.
    """
    if not cfg.data.dataset:
        raise UserError("no dataset given (--dataset DATASET_FOLDER)")
    spec = DatasetSpec.load(cfg.data.dataset)
    d = cfg.data
    if d.source == d.target:
        raise UserError(f"source and target domains are both {d.source!r}")
    spec.cases(d.target)  # a clear error for an unknown target domain
    src_splits = spec.splits.get(d.source, {})
    src = spec.split(d.source, "train") if "train" in src_splits else spec.cases(d.source)
    src = [c for c in src if c.label is not None]
    if not src:
        raise DataError(f"dataset {spec.name!r}: domain {d.source!r} has no labelled cases to train on")
    val = _target_validation(spec, cfg)
    n_hold = d.source_holdout if d.source_holdout >= 0 else (0 if val else max(1, round(0.1 * len(src))))
    if n_hold >= len(src):
        raise DataError(f"data.source_holdout={n_hold} leaves no source case to train on ({len(src)} cases)")
    hold = _seeded_pick(src, n_hold, cfg.runtime.seed + 104729) if n_hold else []
    src = [c for c in src if c not in hold]
    test_ids = set(spec.splits.get(d.target, {}).get(d.test_split, []))
    pool = spec.cases(d.target)
    if d.target_pool == "inductive":
        pool = [c for c in pool if c.id not in test_ids]
    seed = cfg.runtime.seed
    prep = run_preprocessing(cfg, spec)
    src_loaded = load_cases(spec, src, prep, with_labels=True, desc=f"loading {d.source}")
    # Target pool: images only (labels are never read for training).
    tgt_loaded = load_cases(spec, pool, prep, with_labels=False, desc=f"loading {d.target}")
    _warn_cropped(src_loaded, prep, d.source)
    # Cases that are predicted (validation, held-out source) keep whole slices, as prediction sees them.
    val_loaded = load_cases(spec, val, prep, with_labels=True, desc=f"loading {d.target} val", whole=True)
    hold_loaded = load_cases(spec, hold, prep, with_labels=True, desc=f"loading {d.source} held out", whole=True)
    source = SliceCropDataset(
        SliceStack.from_cases(src_loaded, True),
        d.crop,
        d.jitter,
        seed * 2 + 1,
        d.augment,
        CropAugment(cfg.augment, source=True),
    )
    target = SliceCropDataset(
        SliceStack.from_cases(tgt_loaded, False),
        d.crop,
        d.jitter,
        seed * 2 + 2,
        d.augment,
        CropAugment(cfg.augment, source=False),
    )
    labelfree = _seeded_pick(tgt_loaded, cfg.train.labelfree_cases, seed + 7919)
    return TrainData(
        source, target, val_loaded, spec, prep, [c.id for c in src], [c.id for c in pool], labelfree, hold_loaded
    )


def _warn_cropped(cases: list[LoadedCase], prep: Preprocessing, domain: str) -> None:
    """Warn (stderr) naming the training cases whose labels reach beyond the centre crop to ``prep.size``."""
    cut = [(c.id, prep.cropped_share(c.native_label, c.spacing)) for c in cases if c.native_label is not None]
    cut = sorted(((i, share) for i, share in cut if share > 0), key=lambda x: -x[1])
    if cut:
        h, w = prep.size
        names = ", ".join(f"{i} ({100 * share:.1f}%)" for i, share in cut[:10]) + (" ..." if len(cut) > 10 else "")
        tqdm.write(
            f"warning: the labels of {len(cut)} {domain} training case(s) reach beyond the {h}x{w} centre "
            f"crop that training sees (data.size / preprocessing size), share of labelled voxels cut: {names}; "
            "prediction covers the whole image, but training never sees those parts (a larger data.size "
            "keeps them)",
            file=sys.stderr,
        )


def run_preprocessing(cfg: Config, spec: DatasetSpec) -> Preprocessing:
    """The dataset's preprocessing with the run's ``data.resample_mm`` / ``zoom`` / ``size`` applied."""
    prep = spec.preprocessing
    if cfg.data.resample_mm > 0:
        prep = replace(prep, target_spacing=(cfg.data.resample_mm, cfg.data.resample_mm))
    elif cfg.data.zoom > 0:
        prep = replace(prep, target_spacing=None, zoom=cfg.data.zoom)
    if cfg.data.size > 0:
        prep = replace(prep, size=(cfg.data.size, cfg.data.size))
    return prep


class Trainer:
    """Trains ``cfg`` into the model folder ``run``.

    Args:
        cfg: a validated configuration.
        run: the model folder to create (or to continue with ``resume=True``).
        resume: continue from ``run/checkpoints/last.pt``.
    """

    def __init__(self, cfg: Config, run: str | Path, resume: bool = False) -> None:
        cfg.validate()
        require_loggers(cfg.train.loggers)  # a missing extra fails before any data is read
        self.cfg, self.run, self.resume = cfg, Path(run), resume
        self.dist, self.device = init_distributed(cfg.runtime.device)
        configure_backends(self.device, cfg.runtime)
        warning = slow_amp_warning(self.device, cfg.runtime.amp)
        if warning and self.dist.is_main:
            tqdm.write(warning, file=sys.stderr)
        last = mf.checkpoint_path(self.run, "last")
        if resume and not last.is_file():
            raise UserError(f"--resume: no checkpoint to resume from at {last}")
        if not resume and last.exists():
            raise UserError(f"{self.run} already holds a training run; use --resume or another --out folder")
        if not resume:
            mf.check_new_run_folder(self.run)  # never overwrite a user's config.yaml / log.csv / model.json
        self._resumed_from: int | None = None
        seed_everything(cfg.runtime.seed + self.dist.rank)
        self.data = prepare_data(cfg)  # before creating RUN: a bad dataset leaves nothing behind
        try:
            rule = resolve_rule(
                cfg.train.selection,
                self.data.has_val,
                cfg.train.ema > 0,
                cardiac=CardiacRoles.from_names(self.data.spec.labels.class_names) is not None,
                has_labelfree=bool(self.data.labelfree_cases),
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.selector = Selector(
            rule, first_epoch=first_eligible_epoch(rule, cfg.optim.epochs, cfg.train.selection_after)
        )
        if self.dist.is_main:
            ensure_writable_dir(self.run)
        labels = self.data.spec.labels
        self.num_classes = labels.num_classes
        self.info = mf.ModelInfo(
            labels,
            self.data.prep,
            self.data.spec.name,
            str(Path(cfg.data.dataset).resolve()),
            cfg.data.source,
            cfg.data.target,
        )
        torch.manual_seed(cfg.runtime.seed)  # identical initial weights on every rank
        self.method = build_method(cfg, self.num_classes).to(self.device)
        if cfg.runtime.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.optimizers = self.method.configure_optimizers(cfg.optim, fused=cfg.runtime.fused_adam)
        remember_base_lr(self.optimizers)
        self.model: torch.nn.Module = self.method
        if self.dist.enabled:
            self.method.refuse_distributed(self.model)  # before any step: fails at once on every rank
            self.model = DDP(self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = compile_module(self.model, cfg.runtime, self.device)
        self.cudagraphs = uses_cudagraphs(cfg.runtime, self.device)
        self.augmenter = SourceAugmenter(cfg.augment, cfg.runtime.seed, pairs=self.method.view_pairs)
        self.augmenter.attach(self.optimizers)
        self.ema = WeightAverage(self.method, cfg.train.ema) if cfg.train.ema > 0 else None
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        # Stream of dropout / latent noise: distinct per rank; restored exactly on resume.
        torch.manual_seed(cfg.runtime.seed * 1000 + self.dist.rank)
        if resume:
            self._load_state()
            if self.dist.rank > 0:  # only rank 0's RNG state is saved
                torch.manual_seed(cfg.runtime.seed * 1000 + self.dist.rank + 7919 * self.epoch)
        self.predictor = Predictor(
            self.method.net,
            self.info.preprocessing,
            self.device,
            batch_size=validation_batch(cfg.runtime, cfg.optim.batch_size, self.device),
            amp=cfg.runtime.amp,
            channels_last=cfg.runtime.channels_last,
        )

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "epoch": self.epoch,
            "selection": self.selector.record(),
            "history": self.history,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "config": self.cfg.to_dict(),
        }

    def _load_state(self) -> None:
        last = mf.checkpoint_path(self.run, "last")
        self._resumed_from = last.stat().st_mtime_ns
        state = mf.load_checkpoint(last, map_location=self.device)
        if not _same_method_and_model(state.get("config", {}), self.cfg):
            raise UserError("--resume: the checkpoint was trained with a different method/model configuration")
        self.method.load_state_dict(state["method"])
        for k, o in self.optimizers.items():
            load_optimizer_state(o, state["optimizers"][k])
        self.epoch, self.history = state["epoch"], state["history"]
        if "selection" in state:
            self.selector = Selector.from_record(state["selection"])
        else:  # checkpoints written before selection rules: validation Dice
            self.selector = Selector("val-dice", state["best_epoch"], state["best_score"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.dist.is_main:
            sel, best = self.selector, ""
            if sel.best_epoch >= 0 and sel.rule == "val-dice":
                best = f"; best validation Dice {100 * sel.record()['best_score']:.2f} at epoch {sel.best_epoch}"
            elif sel.best_epoch >= 0 and sel.column:
                best = f"; {sel.rule} chose epoch {sel.best_epoch} so far"
            tqdm.write(f"resuming {self.run} after epoch {self.epoch} of {self.cfg.optim.epochs}{best}")

    def _lock_run(self) -> FolderLock:
        """Hold the model folder for this process, then check nobody trained into it meanwhile and remove the
        temporary files a killed run left there.

        Another ``train`` into the folder fails at once while this one runs; the lock dies with the process, so a
        killed run never leaves the folder locked.
        """
        lock = FolderLock(self.run, "model folder").acquire()
        try:
            last = mf.checkpoint_path(self.run, "last")
            stamp = last.stat().st_mtime_ns if last.is_file() else None
            if stamp != self._resumed_from:
                raise UserError(
                    f"{self.run}: another training wrote {last} while this one was starting; "
                    + ("resume again" if self.resume else "use --resume or another --out folder")
                )
            removed = remove_stale_temporaries(self.run) + remove_stale_temporaries(last.parent)
        except BaseException:
            lock.release()
            raise
        if removed:
            tqdm.write(f"removed {len(removed)} temporary file(s) an interrupted run left in {self.run}")
        return lock

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; return a summary (best epoch and score, time)."""
        cfg, is_main = self.cfg, self.dist.is_main
        lock = self._lock_run() if is_main else None
        tracking = None
        try:
            if is_main:
                mf.write_model_folder(self.run, cfg, self.info)
                tqdm.write(describe_world(self.dist, cfg.optim.batch_size, cfg.optim.lr, self.method.needs_target))
                tracking = open_tracking(
                    cfg, self.run, self.history, self.method, self.data, self.device, self.dist.world_size
                )
            start_time = time.time()
            while self.epoch < cfg.optim.epochs:
                stats = self._train_epoch()
                row = {"epoch": self.epoch + 1, **stats}
                last_epoch = self.epoch == cfg.optim.epochs - 1
                if is_main and ((self.epoch + 1) % cfg.runtime.val_every == 0 or last_epoch):
                    row.update(self._scores())
                self.epoch += 1
                if is_main:
                    self._end_epoch(row)
                    tracking.on_epoch(row)
                barrier(self.dist)
            self._check_replicas()
            if is_main:
                self._finish_selection()
                self._decide_postprocessing()
                tracking.finish(self.run)
        finally:
            if tracking is not None:
                tracking.close()
            shutdown_distributed(self.dist)
            if lock is not None:
                lock.release()
        sel = self.selector
        return {
            "selection": sel.rule,
            "checkpoint": sel.checkpoint,
            "best_epoch": sel.best_epoch,
            "best_score": sel.record()["best_score"],
            "epochs": self.epoch,
            "wall_time_s": time.time() - start_time,
        }

    def _finish_selection(self) -> None:
        """Write ``selection.json`` and print the rule, the chosen epoch and the scores of every epoch."""
        sel = self.selector
        record = {
            **sel.record(),
            "labelfree_cases": [c.id for c in self.data.labelfree_cases],
            "source_holdout": [c.id for c in self.data.holdout_cases],
        }
        mf.write_selection(self.run, record)
        cols = [
            c
            for c in ("val/dice_mean", "src/dice_mean", "lf/entropy", "lf/agreement", "lf/plausibility", "lf/snd")
            if any(c in r for r in self.history)
        ]
        lines = ["epoch  " + "  ".join(f"{c:>15}" for c in cols)]
        for r in self.history:
            mark = "  <- chosen" if r["epoch"] == sel.best_epoch else ""
            lines.append(f"{r['epoch']:>5}  " + "  ".join(f"{_fmt(r.get(c)):>15}" for c in cols) + mark)
        tqdm.write("\n".join(lines))
        among = ""
        if 1 < sel.first_epoch < self.epoch:
            among = f", chosen among epochs {sel.first_epoch}-{self.epoch}"
        elif sel.first_epoch == self.epoch > 1:
            among = ", the only epoch eligible"
        if sel.column and sel.best_epoch < 0:
            tqdm.write(f"selection: {sel.column} was never finite{among}: falling back to the last epoch")
        epoch = sel.best_epoch if sel.best_epoch >= 0 else self.epoch
        tqdm.write(
            f"selection: {sel.rule} -> checkpoint '{sel.checkpoint}' (epoch {epoch}{among}); "
            f"recorded in {mf.selection_path(self.run)}"
        )

    def _decide_postprocessing(self) -> None:
        """Decide and store the post-processing of each checkpoint on the validation cases (nothing else).

        Without labelled target validation cases nothing is decided: masks are not post-processed.
        """
        from udavae.engine.postprocessing import decide_and_save

        if not self.data.has_val:
            tqdm.write("no labelled target validation cases: no post-processing decided (masks stay raw)")
            return
        names, where = self.info.labels.class_names, f"{self.cfg.data.target}/{self.cfg.data.val_split}"
        last_weights = {k: v.clone() for k, v in self.method.state_dict().items()}
        lines = [decide_and_save(self.run, "last", self.predictor, self.data.val_cases, names, where).describe()]
        for name in ("best", "ema"):
            path = mf.checkpoint_path(self.run, name)
            if path.is_file():
                self.method.load_state_dict(mf.load_checkpoint(path, map_location=self.device)["method"])
                lines.append(
                    decide_and_save(self.run, name, self.predictor, self.data.val_cases, names, where).describe()
                )
        self.method.load_state_dict(last_weights)
        for line in lines:
            tqdm.write(line)

    def _check_replicas(self) -> None:
        """Under DDP, verify every rank ends with the same weights (a cheap checksum comparison)."""
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        checksum = torch.stack([p.detach().double().sum() for p in self.method.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world_size)]
        dist.all_gather(gathered, checksum.to(self.device))
        if any(not torch.allclose(g, gathered[0], rtol=1e-9, atol=0) for g in gathered):
            raise RuntimeError(f"DDP replicas diverged: parameter checksums {[float(g) for g in gathered]}")
        if self.dist.is_main:
            tqdm.write(f"{self.dist.world_size} DDP replicas hold identical weights (checksum {float(checksum):.6g})")

    def _set_lr(self) -> dict[str, float]:
        """Every param group's lr = its base lr * decay**epoch; returns the log's lr entries.

        ``lr`` is the first group's of the first optimiser (``main``); another group's rate is logged as
        ``lr/<optimiser>`` (``lr/<optimiser>/<group>`` beyond its first group) only where it differs.
        """
        factor = self.cfg.optim.lr_decay**self.epoch
        rates: dict[str, float] = {}
        for name, opt in self.optimizers.items():
            for i, g in enumerate(opt.param_groups):
                g["lr"] = g["base_lr"] * factor
                rates[name if i == 0 else f"{name}/{i}"] = g["lr"]
        first = next(iter(rates.values()))
        return {"lr": first, **{f"lr/{k}": v for k, v in rates.items() if v != first}}

    def _train_epoch(self) -> dict[str, float]:
        cfg, d = self.cfg, self.cfg.data
        rates = self._set_lr()
        iters, bs = cfg.optim.iters_per_epoch, cfg.optim.batch_size
        start = self.epoch * iters
        rank, world = self.dist.rank, self.dist.world_size
        workers, pin = loader_workers(d.num_workers, self.device), self.device.type == "cuda"
        src_it = make_loader(self.data.source, bs, start, workers, rank, world, pin)
        needs_target = self.method.needs_target
        tgt_it = make_loader(self.data.target, bs, start, workers, rank, world, pin) if needs_target else None
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        cl = cfg.runtime.channels_last
        bar = tqdm(
            range(iters),
            desc=f"epoch {self.epoch + 1}/{cfg.optim.epochs}",
            unit="it",
            disable=None if self.dist.is_main else True,
            leave=False,
            dynamic_ncols=True,
        )
        amp_ctx = functools.partial(autocast, self.device, cfg.runtime.amp)
        t0 = time.time()
        for it in bar:
            src = batch_to_device(next(src_it), self.device, cl)
            src = self.augmenter(src, self.method, start + it, amp_ctx)
            tgt = batch_to_device(next(tgt_it), self.device, cl) if tgt_it is not None else None
            losses = optimisation_step(
                self.method,
                self.optimizers,
                src,
                tgt,
                self.device,
                cfg.runtime.amp,
                self.cudagraphs,
                forward=self.model,
                step=start + it,
            )
            losses = {**losses, **self.augmenter.logged}
            if self.ema is not None:
                self.ema.update(self.method)
            for k, v in losses.items():  # new tensors: a CUDA-graph replay may overwrite ``losses``
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v.clone()
            finite &= torch.isfinite(losses["total"].detach())
            if (it + 1) % cfg.runtime.log_every == 0 or it + 1 == iters:
                self._check_finite(finite, start + it)
                bar.set_postfix({k: f"{(v / (it + 1)).item():.3g}" for k, v in _main_terms(sums).items()})
        elapsed = time.time() - t0
        stats = {f"loss/{k}": float(v) / iters for k, v in sums.items()}
        images = iters * bs * world * (2 if needs_target else 1)
        stats.update({**rates, "train_time_s": elapsed, "images_per_s": images / elapsed})
        return stats

    def _check_finite(self, finite: torch.Tensor, step: int) -> None:
        if not bool(finite):
            last = mf.checkpoint_path(self.run, "last")
            kept = (
                f"the last good checkpoint {last} (epoch {self.epoch}) is kept"
                if last.exists()
                else "no checkpoint had been written yet"
            )
            raise TrainingDiverged(
                f"loss became NaN/Inf in epoch {self.epoch + 1} by step {step + 1}; {kept}. "
                "Try a lower optim.lr or runtime.amp=none."
            )

    def _scores(self) -> dict[str, float]:
        """This epoch's selection scores: target validation Dice, source held-out Dice, label-free scores."""
        out: dict[str, float] = {}
        names = list(self.info.labels.class_names.values())
        for prefix, cases in (("val", self.data.val_cases), ("src", self.data.holdout_cases)):
            if cases:
                per = np.nanmean(validation_dice(self.predictor, cases, self.num_classes), axis=0)
                out.update({f"{prefix}/dice_{n}": float(v) for n, v in zip(names, per)})
                out[f"{prefix}/dice_mean"] = float(np.nanmean(per))
        if self.data.labelfree_cases:
            scores = summarize_scores(
                case_scores(self.predictor, c, self.info.labels.class_names) for c in self.data.labelfree_cases
            )
            out.update({f"lf/{k}": v for k, v in scores.items()})
            out["lf/combined"] = (scores["agreement"] + scores["plausibility"]) / 2
        return out

    def _end_epoch(self, row: dict[str, Any]) -> None:
        sel = self.selector
        chosen = sel.update(self.epoch, row)
        row["selected_epoch"] = sel.best_epoch
        self.history.append(row)
        # last.pt first: a kill between the two writes never leaves a best.pt of an epoch the log lacks.
        mf.save_checkpoint(mf.checkpoint_path(self.run, "last"), self._state())
        if chosen:
            mf.save_checkpoint(
                mf.checkpoint_path(self.run, "best"),
                {
                    "method": self.method.state_dict(),
                    "epoch": self.epoch,
                    "rule": sel.rule,
                    "score": row.get(sel.column or ""),
                    "config": self.cfg.to_dict(),
                },
            )
        self._save_weights()
        self._write_logs()
        msg = f"epoch {self.epoch}/{self.cfg.optim.epochs}: loss {row.get('loss/total', float('nan')):.4g}"
        if "val/dice_mean" in row:
            msg += f"  val Dice {100 * row['val/dice_mean']:.2f}"
        if "lf/agreement" in row:
            msg += f"  agreement {row['lf/agreement']:.3f}  plausible {row['lf/plausibility']:.2f}"
        if chosen:
            msg += f" (chosen by {sel.rule})"
        msg += f"  lr {row['lr']:.2e}  {row['train_time_s']:.0f}s"
        tqdm.write(msg)

    def _save_weights(self) -> None:
        """The EMA checkpoint and, with ``train.keep_epochs``, this epoch's weights (and EMA)."""
        tag = {"epoch": self.epoch, "config": self.cfg.to_dict()}
        if self.ema is not None:
            mf.save_checkpoint(mf.checkpoint_path(self.run, "ema"), {"method": self.ema.state_dict(), **tag})
        if self.cfg.train.keep_epochs:
            mf.save_checkpoint(
                mf.checkpoint_path(self.run, mf.epoch_checkpoint(self.epoch)),
                {"method": self.method.state_dict(), **tag},
            )
            if self.ema is not None:
                mf.save_checkpoint(
                    mf.checkpoint_path(self.run, mf.epoch_checkpoint(self.epoch, ema=True)),
                    {"method": self.ema.state_dict(), **tag},
                )

    def _write_logs(self) -> None:
        write_text(self.run / LOG_JSONL, "".join(json.dumps(r) + "\n" for r in self.history))
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        lines = [",".join(keys)] + [",".join(_fmt(r.get(k)) for k in keys) for r in self.history]
        write_text(self.run / LOG_CSV, "\n".join(lines) + "\n")


def _same_method_and_model(saved: dict[str, Any], cfg: Config) -> bool:
    """Whether a checkpoint's config has ``cfg``'s method and model sections.

    The saved config is read back through :meth:`Config.from_dict` first, so a checkpoint written before the
    method options moved into the methods (every kind's options listed) compares equal to its run.
    """
    try:
        saved_cfg = Config.from_dict(saved)
    except (ValueError, TypeError, AttributeError):
        return False
    now, then = cfg.to_dict(), saved_cfg.to_dict()
    return all(then[k] == now[k] for k in ("method", "model"))


def _main_terms(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Loss sums grouped by family (``seg_full`` + ``seg_half`` ... -> ``seg``) for the progress bar."""
    groups: dict[str, torch.Tensor] = {"total": sums["total"]}
    for k, v in sums.items():
        if k != "total":
            g = k.split("_")[0]
            groups[g] = groups[g] + v if g in groups else v
    return groups


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def train(cfg: Config, run: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train and return the fit summary (see :class:`Trainer`)."""
    return Trainer(cfg, run, resume).fit()


__all__ = [
    "Trainer",
    "TrainingDiverged",
    "batch_to_device",
    "load_optimizer_state",
    "optimisation_step",
    "prepare_data",
    "remember_base_lr",
    "run_preprocessing",
    "train",
]
