"""Typed run configuration: one dataclass per concern, serialisable to YAML.

A run is described by a :class:`Config`. Method presets (``udavae++``, ``noadapt``...) and compute
profiles (``paper``, ``cpu``, ``tiny``) are dictionaries of dotted overrides applied on top of the
defaults, so every published row can be re-run and every value can still be changed from the command
line with ``key=value``.

The method section is generic here: :class:`MethodConfig` holds the method's ``name`` and ``kind`` only.
Each method declares its own options (loss weights, switches) as a dataclass sub-class of it in its own
module and registers it (``@register_method`` in :mod:`udavae.methods.registry`), so this module knows no
method's internals and ``method.<option>=value`` keys address the chosen kind's options. Whenever this module
needs a kind's options it imports :mod:`udavae.methods` first (:func:`discover_methods`), so a configuration
behaves the same whatever was imported before it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from udavae.dotted import flatten, parse_overrides  # noqa: F401  (re-exported: ``from udavae.config import ...``)
from udavae.dotted import has_path as _has_key
from udavae.dotted import set_path as _set_path

WIRINGS = ("skip", "concat")
MEAN_HEADS = ("gate", "conv")
#: Reference distributions of the SMIE prior critic. Kept here only because ``udavae.models.smie`` imports it;
#: the option itself is ``udavae.methods.vae.VAEOptions.prior``.
TARGET_POOLS = ("transductive", "inductive")
AMP_MODES = ("none", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConfig:
    """Segmentation network and reconstruction decoders.

    Attributes:
        base_width: channels of the first encoder level (64 in the paper); level i has base*2**i.
        depth: number of encoder levels (5 in the paper); inputs must be divisible by 2**(depth-1).
        wiring: ``skip`` (up-sampled coarse sample + encoder skip, VarDA / HEAD code) or ``concat``
            (up-sampled sample + up-sampled deterministic coarse feature, no encoder skip at 1/2 and 1;
            the 2022 release, the ablation's "CN").
        mean_head: ``gate`` (1x1 spatial gate, the ablation's "Att") or ``conv`` (3x3 conv + IN + tanh).
        dropout: Dropout2d probability in the decoder stages that have it (0.5 in the paper).
        recon_width: widest channel count of the seven-conv reconstruction decoders (128 in the paper).
    """

    base_width: int = 64
    depth: int = 5
    wiring: str = "skip"
    mean_head: str = "gate"
    dropout: float = 0.5
    recon_width: int = 128


@dataclass
class MethodConfig:
    """Which UDA method is trained: its name and kind, and (in sub-classes) its options.

    This class knows nothing of any method. Each method kind declares its options as a dataclass
    sub-class of this one in its own module (``udavae.methods.vae.VAEOptions``...) and registers it with
    :func:`register_method_options` (``udavae.methods`` does so on import); ``Config.method`` holds an
    instance of the sub-class of its kind, so ``method.<option>`` keys are that dataclass's fields.

    Attributes:
        name: preset name recorded for reports (``udavae++``, ``noadapt``...).
        kind: the method that trains, a kind registered in ``udavae.methods.METHODS`` (``vae``...); its
            options dataclass says which other ``method.*`` keys exist.
    """

    name: str = "udavae++"
    kind: str = "vae"

    def validate(self, cfg: Config) -> None:
        """Raise ``ValueError`` on options inconsistent with ``cfg``; sub-classes add their checks."""


#: Method kind -> its options dataclass, filled by :func:`register_method_options`.
_METHOD_OPTIONS: dict[str, type[MethodConfig]] = {}
#: Preset name -> (method kind, dotted overrides, one line of help), filled by :func:`register_method_options`.
_PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {}
#: The entry-point group through which method packages declare their methods (udavae's own in pyproject.toml).
ENTRY_POINT_GROUP = "udavae.methods"


def discover_methods() -> None:
    """Load every method declared in the ``udavae.methods`` entry-point group, unless methods are registered.

    Loading a method class imports its module, whose ``@register_method`` registers its options and presets;
    so this module never imports a method, and a configuration behaves the same whatever was imported first.
    Another package can add methods by declaring entry points in this group.
    """
    if _METHOD_OPTIONS:
        return
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
    if not _METHOD_OPTIONS:
        raise RuntimeError(
            f"no udavae method is registered: the {ENTRY_POINT_GROUP!r} entry points are missing; "
            "install the package (pip install -e .)"
        )


def register_method_options(
    kind: str, options: type[MethodConfig], presets: dict[str, tuple[dict[str, Any], str]] | None = None
) -> None:
    """Declare ``options`` (a :class:`MethodConfig` dataclass sub-class) as the options of method ``kind``, and
    its presets (name -> (dotted overrides, one line of help))."""
    if not (isinstance(options, type) and issubclass(options, MethodConfig) and dataclasses.is_dataclass(options)):
        raise TypeError(f"options of method kind {kind!r} must be a dataclass sub-class of MethodConfig")
    for name in presets or {}:
        owner = _PRESETS.get(name, (kind,))[0]
        if owner != kind:
            raise ValueError(f"preset {name!r} is declared by both {owner!r} and {kind!r}")
    _METHOD_OPTIONS[kind] = options
    for name, (overrides, text) in (presets or {}).items():
        _PRESETS[name] = (kind, dict(overrides), text)


def preset_table() -> dict[str, tuple[str, dict[str, Any], str]]:
    """Every registered preset: name -> (method kind, dotted overrides, one line of help)."""
    discover_methods()
    return dict(_PRESETS)


def method_kinds() -> tuple[str, ...]:
    """The registered method kinds."""
    discover_methods()
    return tuple(_METHOD_OPTIONS)


def method_options(kind: str) -> type[MethodConfig]:
    """The options dataclass of method ``kind``; ``ValueError`` naming the registered kinds if unknown."""
    discover_methods()
    if kind not in _METHOD_OPTIONS:
        known = ", ".join(_METHOD_OPTIONS) or "none registered (import udavae.methods first)"
        raise ValueError(f"method.kind={kind!r} is not one of {known}")
    return _METHOD_OPTIONS[kind]


def _default_method() -> MethodConfig:
    """The default method kind's options."""
    return method_options(MethodConfig.kind)()


@dataclass
class DataConfig:
    """Which data a run trains on and how slices are sampled.

    Attributes:
        dataset: path of a prepared dataset folder (with ``dataset.json``).
        source / target: domain names in that dataset.
        crop: training crop size (square); must be divisible by the network stride.
        jitter: maximum random shift of the crop around the centre, in pixels (+-16 in the paper).
        target_pool: ``transductive`` (all target images, labels unused, as the published code) or
            ``inductive`` (target cases outside the test split only).
        val_split / test_split: names of the target splits used for selection and for reporting.
        augment: random flips / rot90 / intensity gamma on training crops (the ``augment`` section has more).
        source_holdout: labelled source cases held out of training to score the source Dice each epoch;
            -1 = automatic: none when the target has labelled validation cases, else 10% (at least 1).
        num_workers: DataLoader worker processes (0 = in the main process; -1 = automatic: 4 on CUDA,
            0 on the CPU). The batches do not depend on it.
        resample_mm: if > 0, resample every domain in-plane to this isotropic spacing (mm) instead of the
            dataset's own preprocessing; matches anatomical scale across domains and sets the cost.
        zoom: if > 0 (and ``resample_mm`` is 0), scale slices in-plane by this pixel factor instead.
        size: if > 0, the in-plane size (pixels) slices are centre-cropped / padded to after resampling.
            Both are stored with the model; evaluation and prediction still return to the native grid.
    """

    dataset: str = ""
    source: str = "C0"
    target: str = "LGE"
    crop: int = 160
    jitter: int = 16
    target_pool: str = "transductive"
    val_split: str = "val"
    test_split: str = "test"
    augment: bool = False
    source_holdout: int = -1
    num_workers: int = -1
    resample_mm: float = 0.0
    zoom: float = 0.0
    size: int = 0


@dataclass
class AugmentConfig:
    """Augmentation of the training crops (never applied at validation, evaluation or prediction).

    Three families, each switched on by its own flag and composable with every method (docs/augmentation.md):

    * ``spatial`` / ``intensity``: the standard transforms of segmentation training, taken from MONAI and
      drawn per crop from the crop's own seeded stream (so a resumed run sees the same crops): random affine
      (rotation, scale, shear), elastic deformation and flips; contrast (gamma), bias field, noise and blur.
    * ``slaug``: SLAug (Su et al., AAAI 2023): global and class-level location-scale augmentation of the
      source crops, fused by saliency balancing (the gradient of the segmentation loss decides, on a coarse
      grid, which of the two views each region takes).
    * ``gin``: GIN-IPA (Ouyang et al., IEEE TMI 2023): random shallow convolution networks as intensity and
      texture augmentation, blended through a random smooth field (IPA).

    Attributes:
        spatial: random affine + elastic deformation (+ flips when ``flip_prob`` > 0) of image and label.
            Off by default here and in the ``tiny`` profile; the ``cpu`` and ``paper`` profiles switch it and
            ``intensity`` on (``STANDARD_AUGMENTATION``, decided on validation Dice).
        intensity: random gamma, bias field, Gaussian noise and Gaussian blur of the image.
        target: also apply ``spatial`` / ``intensity`` to the target crops (methods that read target images).
        affine_prob: probability of the random affine per crop.
        rotate_deg: maximum in-plane rotation, degrees (uniform in +-rotate_deg).
        scale: maximum relative scaling (uniform in 1 +- scale).
        shear: maximum shear factor (uniform in +-shear).
        elastic_prob: probability of the elastic deformation per crop.
        elastic_magnitude: maximum displacement of the elastic control grid, in grid units.
        flip_prob: probability of each in-plane flip (0: none; flips change the heart's handedness).
        gamma_prob / gamma: probability and range (low, high) of the random gamma.
        bias_prob / bias_coeff: probability and maximum coefficient of the polynomial bias field.
        noise_prob / noise_std: probability and maximum standard deviation of additive Gaussian noise.
        blur_prob / blur_sigma: probability and range (low, high) of the Gaussian blur sigma, in pixels.
        slaug: SLAug on the source crops (location-scale + saliency-balancing fusion).
        slaug_points: control points of each random Bezier intensity curve (4 in the paper).
        slaug_grid: side of the coarse grid the saliency is averaged on (3 in the public code).
        slaug_background: intensities at or below this keep their value in the class-level view (0.01).
        slaug_views: what the method trains on. ``both`` (as the public code): the saliency pass on the global
            view is a full training pass of the segmentation terms, whose parameter gradients are kept and added
            to the method's step on the fused view (two passes of the batch). ``fused``: the fused view alone
            (the saliency pass computes the input gradient only). ``stacked``: the global and the fused view
            stacked along the batch of the method's step (three passes; the second version, kept to reproduce
            its results).
        gin: GIN-IPA on the source crops (random convolutions + IPA blend).
        gin_layers: convolution layers of each random network (4 in the paper).
        gin_channels: intermediate channels of each random network (2 in the paper).
        ipa_grid: side of the control grid of IPA's random blending field.
    """

    spatial: bool = False
    intensity: bool = False
    target: bool = False
    affine_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.15
    shear: float = 0.1
    elastic_prob: float = 0.2
    elastic_magnitude: float = 1.0
    flip_prob: float = 0.0
    gamma_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    bias_prob: float = 0.3
    bias_coeff: float = 0.3
    noise_prob: float = 0.15
    noise_std: float = 0.05
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    slaug: bool = False
    slaug_points: int = 4
    slaug_grid: int = 3
    slaug_background: float = 0.01
    slaug_views: str = "both"
    gin: bool = False
    gin_layers: int = 4
    gin_channels: int = 2
    ipa_grid: int = 4

    @property
    def standard(self) -> bool:
        """Whether any of the standard (MONAI) transforms is on."""
        return self.spatial or self.intensity

    def validate(self) -> None:
        """Raise ``ValueError`` on a probability outside [0, 1] or an empty range."""
        for name in ("affine_prob", "elastic_prob", "flip_prob", "gamma_prob", "bias_prob", "noise_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("gamma", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"augment.{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        if (
            self.slaug_points < 2
            or self.slaug_grid < 1
            or self.gin_layers < 1
            or self.gin_channels < 1
            or self.ipa_grid < 2
        ):
            raise ValueError(
                "augment.slaug_points >= 2, slaug_grid >= 1, gin_layers >= 1, gin_channels >= 1 and "
                "ipa_grid >= 2 are required"
            )
        if self.slaug_views not in ("both", "fused", "stacked"):
            raise ValueError(f"augment.slaug_views must be 'both', 'fused' or 'stacked', got {self.slaug_views!r}")
        if self.slaug and self.gin:
            raise ValueError("augment.slaug and augment.gin both replace the source crops' intensities: choose one")


#: Checkpoint-selection rules (``udavae.engine.selection`` defines each).
SELECTIONS = (
    "auto",
    "val-dice",
    "source-dice",
    "entropy",
    "agreement",
    "plausibility",
    "snd",
    "label-free",
    "last",
    "ema",
)


#: Experiment trackers of ``train.loggers`` (``udavae.engine.tracking`` writes each).
LOGGERS = ("csv", "tensorboard", "mlflow")


@dataclass
class TrainConfig:
    """Which weights a run keeps and which one it hands to evaluation and prediction.

    Attributes:
        selection: the rule that chooses the checkpoint ``evaluate`` / ``predict`` use: ``auto`` (``val-dice``
            when the target has labelled validation cases, else the label-free default of docs/selection.md),
            ``val-dice``, ``source-dice``, ``entropy``, ``agreement``, ``plausibility``, ``snd``, ``label-free``
            (an epoch chosen by that score), ``last`` or ``ema`` (the weight average at the last epoch).
        selection_after: the label-free score rules choose among the epochs after this fraction of the
            schedule (0.5: the second half; 0: any epoch). Early epochs can score well on plausibility and
            agreement before their masks are right (docs/selection.md).
        ema: decay of the exponential moving average of the weights, updated after every step
            (0 = none; 0.99 averages over about the last 100 steps). Saved as ``checkpoints/ema.pt``.
        keep_epochs: keep every epoch's weights (and EMA) as ``checkpoints/epoch_NNN.pt`` (for studies of
            checkpoint selection; 1-2 MB per epoch at the cpu profile).
        labelfree_cases: target cases (a fixed, seeded subset of the training pool, recorded in
            ``selection.json``) on which the label-free scores are computed every epoch; 0 = none.
        loggers: where every epoch's scores go, e.g. ``csv,tensorboard,mlflow``: ``csv`` (``log.csv`` and
            ``log.jsonl``, always written), ``tensorboard`` (``RUN/tensorboard/``, extra ``udavae[tensorboard]``),
            ``mlflow`` (params, metrics and the model folder, extra ``udavae[mlflow]``); docs/howto/tracking.md.
        mlflow_uri: MLflow tracking URI or folder; empty = the file store ``mlruns/`` beside the model folder.
    """

    selection: str = "auto"
    selection_after: float = 0.5
    ema: float = 0.99
    keep_epochs: bool = False
    labelfree_cases: int = 8
    loggers: list[str] = field(default_factory=lambda: ["csv"])
    mlflow_uri: str = ""

    def validate(self) -> None:
        """Raise ``ValueError`` on an unknown rule or a decay outside [0, 1)."""
        _choice("train.selection", self.selection, SELECTIONS)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"train.ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.selection_after < 1.0:
            raise ValueError(f"train.selection_after must be in [0, 1), got {self.selection_after}")
        if self.selection == "ema" and self.ema == 0.0:
            raise ValueError("train.selection=ema needs train.ema > 0 (e.g. train.ema=0.99)")
        if self.labelfree_cases < 0:
            raise ValueError(f"train.labelfree_cases must be >= 0, got {self.labelfree_cases}")
        unknown = [name for name in self.loggers if name not in LOGGERS]
        if unknown:
            raise ValueError(f"train.loggers: unknown logger(s) {', '.join(unknown)}; choose from {', '.join(LOGGERS)}")
        if len(set(self.loggers)) != len(self.loggers):
            raise ValueError(f"train.loggers lists a logger twice: {','.join(self.loggers)}")


@dataclass
class OptimConfig:
    """Optimisation schedule (paper: Adam 1e-4, x0.9 per epoch, wd 1e-5, batch 12, 30 epochs).

    Attributes:
        lr: base learning rate of the method's optimisers (a method may give an optimiser its own rate).
        lr_decay: factor applied to every learning rate once per epoch (lr = base lr * lr_decay**epoch).
        weight_decay: Adam's coupled L2 weight decay.
        batch_size: slices per domain per step (per process under torchrun).
        epochs: number of epochs.
        iters_per_epoch: training steps per epoch (the shorter domain's crops are cycled).
    """

    lr: float = 1e-4
    lr_decay: float = 0.9
    weight_decay: float = 1e-5
    batch_size: int = 12
    epochs: int = 30
    iters_per_epoch: int = 130


@dataclass
class RuntimeConfig:
    """Where and how fast a run executes; none of these change the maths except ``amp``.

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``; ``auto`` picks CUDA when available.
        seed: seed of every random stream (data sampling, init, dropout, latent noise).
        amp: mixed precision of training: ``none`` (float32) or ``bf16`` (CPUs with AVX512-BF16 / AMX, and
            GPUs); ``fp16`` is refused for training (see :meth:`Config.validate`).
        channels_last: NHWC memory format for convolutions.
        compile: wrap the training module in ``torch.compile``.
        compile_mode: ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs on CUDA: one
            launch for the whole step's kernels), ``max-autotune`` or ``max-autotune-no-cudagraphs``.
        cudnn_benchmark: let cuDNN time its convolution algorithms once per shape and keep the fastest
            (CUDA only; the crops have one fixed shape). Algorithms differ in rounding, not in maths.
        fused_adam: use PyTorch's fused single-kernel Adam (CUDA only; the same update, rounded in
            another order); on the CPU the default multi-tensor Adam is kept, so CPU runs are unchanged.
        val_batch: slices per forward pass in validation; 0 = automatic (64 on CUDA, the training batch
            on the CPU). Changes speed only.
        val_every: validate every N epochs (the last epoch is always validated).
        log_every: steps between progress-bar / log updates (the only host syncs in the loop).
    """

    device: str = "auto"
    seed: int = 0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    cudnn_benchmark: bool = True
    fused_adam: bool = True
    val_batch: int = 0
    val_every: int = 1
    log_every: int = 10


@dataclass
class Config:
    """Everything that defines a training run.

    Attributes:
        preset: the method preset the run was built from (``udavae.methods.presets``).
        profile: the compute profile the run was built from (``paper``, ``cpu``, ``tiny``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=_default_method)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "udavae++"
    profile: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML / JSON."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild a saved configuration (:meth:`to_dict` output, a run's ``config.yaml``).

        Files written before the options moved into the methods list every kind's options under ``method``;
        those of other kinds are dropped with a warning (they never had an effect). Other unknown keys raise
        ``ValueError``.
        """
        cfg = cls()
        apply_overrides(cfg, flatten(d), saved=True)
        return cfg

    @classmethod
    def from_preset(cls, preset: str = "udavae++", profile: str = "paper", **overrides: Any) -> Config:
        """Defaults <- ``profile`` <- ``preset`` <- ``overrides``, validated.

        Keyword overrides use ``__`` for the dots of a key: ``Config.from_preset("noadapt", "cpu",
        optim__epochs=3)``; a dict of dotted keys may also be passed as ``overrides={"optim.epochs": 3}``.
        """
        dotted = dict(overrides.pop("overrides", None) or {})
        dotted.update({k.replace("__", "."): v for k, v in overrides.items()})
        return build_config(preset, profile, dotted)

    def validate(self) -> None:
        """Raise ``ValueError`` with a precise message on an inconsistent configuration."""
        _resolve_method(self)
        m, me, da, op = self.model, self.method, self.data, self.optim
        _choice("model.wiring", m.wiring, WIRINGS)
        _choice("model.mean_head", m.mean_head, MEAN_HEADS)
        if type(me) is not method_options(me.kind):
            raise ValueError(
                f"method options are {type(me).__name__}, not those of method.kind={me.kind!r} "
                f"({method_options(me.kind).__name__}): change the kind with a method.kind override "
                "(apply_overrides), which swaps the options"
            )
        _choice("data.target_pool", da.target_pool, TARGET_POOLS)
        _choice("runtime.amp", self.runtime.amp, AMP_MODES)
        if self.runtime.amp == "fp16":
            raise ValueError(
                "runtime.amp=fp16 is not supported for training: float16's range (max 65504) needs loss "
                "scaling, which udavae does not implement for its multi-optimiser objective. Use bf16 (float32's "
                "range, the same tensor-core speed on A100/H100-class GPUs and on CPUs with AVX512-BF16/AMX) or "
                "none. fp16 remains available for inference (evaluate/predict --amp fp16 on CUDA)."
            )
        _choice("runtime.compile_mode", self.runtime.compile_mode, COMPILE_MODES)
        if self.runtime.val_batch < 0:
            raise ValueError(f"runtime.val_batch must be >= 0 (0 = automatic), got {self.runtime.val_batch}")
        if m.depth < 3:
            raise ValueError(f"model.depth must be >= 3 (three latent scales), got {m.depth}")
        if m.base_width < 1 or m.recon_width < 4:
            raise ValueError("model.base_width must be >= 1 and model.recon_width >= 4")
        stride = 2 ** (m.depth - 1)
        if da.crop % stride:
            raise ValueError(f"data.crop={da.crop} must be divisible by the network stride {stride}")
        if da.size and da.crop > da.size:
            raise ValueError(f"data.crop={da.crop} is larger than data.size={da.size}")
        if da.zoom < 0:
            raise ValueError(f"data.zoom must be >= 0, got {da.zoom}")
        if da.resample_mm < 0:
            raise ValueError(f"data.resample_mm must be >= 0, got {da.resample_mm}")
        if da.num_workers < -1:
            raise ValueError(f"data.num_workers must be >= 0, or -1 for automatic, got {da.num_workers}")
        if da.source_holdout < -1:
            raise ValueError(f"data.source_holdout must be >= 0, or -1 for automatic, got {da.source_holdout}")
        if da.jitter < 0:
            raise ValueError(f"data.jitter must be >= 0, got {da.jitter}")
        for name in ("batch_size", "epochs", "iters_per_epoch"):
            if getattr(op, name) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(op, name)}")
        if not op.lr > 0 or not math.isfinite(op.lr):
            raise ValueError(f"optim.lr must be a finite number > 0, got {op.lr}")
        self.augment.validate()
        self.train.validate()
        me.validate(self)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _unknown_key(key: str, cfg: Config | None = None) -> ValueError:
    """The error for a key no dataclass has, with the nearest known keys as a hint."""
    import difflib

    known = list(flatten((cfg or Config()).to_dict()))
    known += [k for k in _other_kinds_keys(cfg.method.kind if cfg else "") if k not in known]
    close = difflib.get_close_matches(key, known, n=3)
    hint = ""
    if len(close) == 1:
        hint = f"; did you mean {close[0]!r}?"
    elif close:
        hint = f"; did you mean one of {', '.join(repr(k) for k in close)}?"
    return ValueError(f"unknown config key {key!r}{hint} (`udavae config show` lists every key)")


def _other_kinds_keys(kind: str) -> dict[str, Any]:
    """``method.*`` option keys of the registered kinds other than ``kind``, each with a default value."""
    discover_methods()
    out: dict[str, Any] = {}
    for k, options in _METHOD_OPTIONS.items():
        for key, default in flatten(dataclasses.asdict(options()), "method.").items():
            if k != kind and key not in ("method.name", "method.kind"):
                out.setdefault(key, default)
    return out


def _resolve_method(cfg: Config) -> None:
    """Give a generic ``MethodConfig`` (built by hand) its kind's options class."""
    if type(cfg.method) is MethodConfig:
        cfg.method = method_options(cfg.method.kind)(name=cfg.method.name)


def _set_method_kind(cfg: Config, value: Any) -> None:
    """Switch ``cfg.method`` to the options of kind ``value``, keeping every key both kinds have.

    Setting the kind it already has changes nothing; a new kind starts from its options' defaults, then
    takes the values of the keys it shares with the old options (``name``, ``weights.seg``...), as one flat
    ``method.*`` namespace did before the options moved into the methods.
    """
    options = method_options(str(value))
    old = cfg.method
    if type(old) is options:
        return
    new = options()
    for key, kept in flatten(dataclasses.asdict(old), "method.").items():
        if key != "method.kind" and _has_key(new, key.split(".")[1:]):
            _set_path(new, key.split(".")[1:], key, kept)
    cfg.method = new


def apply_overrides(cfg: Config, overrides: dict[str, Any], saved: bool = False) -> Config:
    """Set dotted keys (``"model.base_width": 16``) in place, type-checked against the current values.

    ``method.kind`` is applied first and swaps ``cfg.method`` for that kind's options (see
    :func:`_set_method_kind`); ``method.<option>`` keys then address its fields. A ``method.*`` key that is an
    option of another kind only is an error naming the method and its keys: it would have no effect, and a
    user who sets it believes it did. With ``saved`` (reading a run's ``config.yaml``) such keys are dropped
    with a warning instead: files written before the options moved into the methods list every kind's
    options. Any other unknown key raises ``ValueError``.
    """
    _resolve_method(cfg)
    items = sorted(overrides.items(), key=lambda kv: kv[0] != "method.kind")  # stable: the rest keep their order
    dropped = []
    for key, value in items:
        parts = key.split(".")
        if key == "method.kind":
            _set_method_kind(cfg, value)
        elif _has_key(cfg, parts):
            _set_path(cfg, parts, key, value)
        elif key in _other_kinds_keys(cfg.method.kind):
            if not saved:
                raise _foreign_key(key, cfg)
            dropped.append(key)
        else:
            raise _unknown_key(key, cfg)
    if dropped:
        warnings.warn(
            f"saved configuration: dropped {len(dropped)} key(s) that method kind {cfg.method.kind!r} "
            f"does not have ({', '.join(dropped)}); they had no effect",
            stacklevel=2,
        )
    return cfg


def _foreign_key(key: str, cfg: Config) -> ValueError:
    """The error for a ``method.*`` key of another method kind: names the method and its valid keys."""
    own = [k for k in flatten(dataclasses.asdict(cfg.method), "method.") if k not in ("method.name", "method.kind")]
    owners = [
        k
        for k, opts in _METHOD_OPTIONS.items()
        if k != cfg.method.kind and key in flatten(dataclasses.asdict(opts()), "method.")
    ]
    return ValueError(
        f"{key} is not an option of method {cfg.method.name!r} (kind {cfg.method.kind!r}; it belongs "
        f"to {', '.join(owners)}): it would have no effect. Keys of {cfg.method.kind!r}: "
        f"{', '.join(own) or 'none'}"
    )


#: The standard augmentation (MONAI affine, elastic, gamma, bias field, noise, blur; ``augment.spatial`` and
#: ``augment.intensity``) that the ``cpu`` and ``paper`` profiles switch on. Decided on the validation patients
#: only (MS-CMRSeg LGE 1-5, C0 -> LGE, cpu profile, 3 seeds): noadapt's mean Dice 57.1 +- 1.2 without it,
#: 62.7 +- 1.2 with it, ahead at every seed, for about 10% more time per step (docs/augmentation.md). Presets
#: that bring their own intensity augmentation (slaug, gin-ipa, udavae++slaug) switch ``augment.intensity`` off
#: again; ``augment.spatial=false augment.intensity=false`` restores the setting of the published methods.
STANDARD_AUGMENTATION: dict[str, Any] = {"augment.spatial": True, "augment.intensity": True}

#: Compute profiles: *how much* a run trains (width, crop, batch, schedule); presets say *what*.
PROFILES: dict[str, dict[str, Any]] = {
    # The paper's setting (a GPU setting: ~5.3-5.7 TFLOP per step).
    "paper": {
        "model.base_width": 64,
        "data.crop": 160,
        "data.jitter": 16,
        "optim.batch_size": 12,
        "optim.epochs": 30,
        "optim.iters_per_epoch": 130,
        "optim.lr": 1e-4,
        **STANDARD_AUGMENTATION,
    },
    # A budget that trains UDA-VAE++ on 2 CPU cores in <= 40 minutes: measured 39 min in fp32 and 28 min with
    # --amp bf16 on an idle 2-core AMD EPYC VM with AVX512-BF16 (docs/performance.md, benchmarks/mscmrseg_cpu.py).
    # Slices zoomed by 2/3 in pixels (192 -> 128; 2.25x fewer pixels), 96x96 training crops (the paper's
    # 160-of-192 at 2/3); evaluation still at the native grid. A pixel zoom rather than a common spacing:
    # the Patch192 C0 headers (1.25 mm) do not describe their pixels, and resampling by them made the C0
    # hearts twice the size of the LGE hearts.
    "cpu": {
        "model.base_width": 16,
        "model.recon_width": 32,
        "data.zoom": 2 / 3,
        "data.size": 128,
        "data.crop": 96,
        "data.jitter": 16,
        "optim.batch_size": 12,
        "optim.epochs": 12,
        "optim.iters_per_epoch": 100,
        "optim.lr": 1e-3,
        "optim.lr_decay": 0.85,
        **STANDARD_AUGMENTATION,
    },
    # Seconds-scale runs for tests and the demo.
    "tiny": {
        "model.base_width": 8,
        "model.recon_width": 16,
        "data.crop": 64,
        "data.jitter": 8,
        "optim.batch_size": 4,
        "optim.epochs": 2,
        "optim.iters_per_epoch": 5,
        "optim.lr": 1e-3,
        "optim.lr_decay": 0.9,
        "train.labelfree_cases": 2,
    },
}


def build_config(preset: str = "udavae++", profile: str = "paper", overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- profile <- preset <- overrides, validated.

    Raises:
        ValueError: unknown preset / profile / key, or an inconsistent result.
    """
    presets = preset_table()
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    cfg = Config(preset=preset, profile=profile)
    apply_overrides(cfg, PROFILES[profile])
    kind, preset_overrides, _ = presets[preset]
    apply_overrides(cfg, {"method.kind": kind, **preset_overrides})
    cfg.method.name = preset
    apply_overrides(cfg, overrides or {})
    cfg.validate()
    return cfg
