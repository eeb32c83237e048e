"""Typed run configuration: one dataclass per concern, serialisable to YAML.

A run is described by a :class:`Config`. Method presets (``udavae++``, ``noadapt``...) and compute
profiles (``paper``, ``cpu``, ``tiny``) are dictionaries of dotted overrides applied on top of the
defaults, so every published row can be re-run and every value can still be changed from the command
line with ``key=value``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

WIRINGS = ("skip", "concat")
MEAN_HEADS = ("gate", "conv")
METHOD_KINDS = ("noadapt", "vae", "cfd")
PRIORS = ("uniform", "normal")
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
class LossWeights:
    """Weights of the total objective, defaults = the authors' code (REFERENCE_SPEC s3.2).

    Mapping to the deck's eq. (12) (divide by ``seg``): c1 = recon/seg = 1e-2 (BCE), the KL gets
    kl/seg = 1e-3 (the deck says c1), c2 = 1 (source segmentation only), c3 = mi/seg = 1e-1, and the
    distance weights play c4 (deck 1e-5; code 1e-6 / 1e-6 / 1e-7 relative).
    """

    seg: float = 1000.0
    recon: float = 10.0
    kl: float = 1.0
    dist: tuple[float, float, float] = (1e-3, 1e-3, 1e-4)  # full, 1/2, 1/4 scale
    mi: float = 100.0
    cf: float = 1e-5
    mean_match: float = 1e3


@dataclass
class MethodConfig:
    """Which UDA method and which of its parts are on.

    Attributes:
        name: preset name recorded for reports (``udavae++``, ``noadapt``...).
        kind: ``noadapt`` (source segmentation only), ``vae`` (UDA-VAE family: reconstruction, KL,
            Gaussian-kernel distance, optional SMIE) or ``cfd`` (CFDNet: characteristic-function distance).
        mi_global / mi_local / mi_prior: SMIE estimators switched on (all off = no MI critics).
        mi_alpha / mi_beta / mi_gamma: weights of the global, local and prior estimates (0.5 / 1.0 / 0.1).
        prior: reference distribution of the prior critic, ``uniform`` (code) or ``normal`` (deck).
        dist_pool: average-pooling window applied to mu / var before the Gaussian distance (4).
        cf_band: band T of the characteristic-function distance.
        cf_pool: average-pooling window on the full-scale latent before the CF distance (20).
        weights: loss weights.
    """

    name: str = "udavae++"
    kind: str = "vae"
    mi_global: bool = True
    mi_local: bool = True
    mi_prior: bool = True
    mi_alpha: float = 0.5
    mi_beta: float = 1.0
    mi_gamma: float = 0.1
    prior: str = "uniform"
    dist_pool: int = 4
    cf_band: float = 100.0
    cf_pool: int = 20
    weights: LossWeights = field(default_factory=LossWeights)

    @property
    def uses_mi(self) -> bool:
        """Whether any SMIE estimator is on (then a second optimiser trains the critics)."""
        return self.kind == "vae" and (self.mi_global or self.mi_local or self.mi_prior)


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
        augment: random flips / rot90 / intensity gamma on training crops.
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
    num_workers: int = -1
    resample_mm: float = 0.0
    zoom: float = 0.0
    size: int = 0


@dataclass
class OptimConfig:
    """Optimisation schedule (paper: Adam 1e-4, x0.9 per epoch, wd 1e-5, batch 12, 30 epochs)."""

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
    """Everything that defines a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    preset: str = "udavae++"
    profile: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML / JSON."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        cfg = cls()
        apply_overrides(cfg, flatten(d))
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` with a precise message on an inconsistent configuration."""
        m, me, da, op = self.model, self.method, self.data, self.optim
        _choice("model.wiring", m.wiring, WIRINGS)
        _choice("model.mean_head", m.mean_head, MEAN_HEADS)
        _choice("method.kind", me.kind, METHOD_KINDS)
        _choice("method.prior", me.prior, PRIORS)
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
        if me.kind == "vae" and da.crop % (4 * me.dist_pool):
            raise ValueError(
                f"data.crop={da.crop} must be divisible by 4*method.dist_pool={4 * me.dist_pool}"
            )
        if da.size and da.crop > da.size:
            raise ValueError(f"data.crop={da.crop} is larger than data.size={da.size}")
        if da.zoom < 0:
            raise ValueError(f"data.zoom must be >= 0, got {da.zoom}")
        if da.resample_mm < 0:
            raise ValueError(f"data.resample_mm must be >= 0, got {da.resample_mm}")
        if da.num_workers < -1:
            raise ValueError(f"data.num_workers must be >= 0, or -1 for automatic, got {da.num_workers}")
        if da.jitter < 0:
            raise ValueError(f"data.jitter must be >= 0, got {da.jitter}")
        for name in ("batch_size", "epochs", "iters_per_epoch"):
            if getattr(op, name) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(op, name)}")
        if op.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {op.lr}")
        if len(me.weights.dist) != 3:
            raise ValueError("method.weights.dist needs three values (full, 1/2, 1/4 scale)")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert ``value`` (possibly a CLI string) to the type of ``current``."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")
    if isinstance(current, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(items) != len(current):
            raise ValueError(f"{key}: expected {len(current)} comma-separated values, got {value!r}")
        return tuple(_coerce(key, c, v) for c, v in zip(current, items))
    try:
        if isinstance(current, int):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float('inf'))
        kind = "an integer" if isinstance(current, int) else "a number"
        raise ValueError(f"{key}: expected {kind}, got {value!r}") from None
    return str(value)


def _unknown_key(key: str) -> ValueError:
    """The error for a key no dataclass has, with the nearest known keys as a hint."""
    import difflib

    close = difflib.get_close_matches(key, flatten(Config().to_dict()), n=3)
    hint = ""
    if len(close) == 1:
        hint = f"; did you mean {close[0]!r}?"
    elif close:
        hint = f"; did you mean one of {', '.join(repr(k) for k in close)}?"
    return ValueError(f"unknown config key {key!r}{hint} (`udavae config show` lists every key)")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys (``"model.base_width": 16``) in place, type-checked against the defaults."""
    for key, value in overrides.items():
        parts = key.split(".")
        obj: Any = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise _unknown_key(key)
            obj = getattr(obj, p)
        leaf = parts[-1]
        if not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
            raise _unknown_key(key)
        setattr(obj, leaf, _coerce(key, getattr(obj, leaf), value))
    return cfg


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Parse CLI ``key=value`` items."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
