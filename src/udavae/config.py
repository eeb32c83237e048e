"""Typed run configuration: one dataclass per concern, serialisable to YAML.

A run is described by a :class:`Config`. Method presets (``udavae++``, ``noadapt``...) and compute
profiles (``paper``, ``cpu``, ``tiny``) are dictionaries of dotted overrides applied on top of the
defaults, so every published row can be re-run and every value can still be changed from the command
line with ``key=value``.

The method section is generic here: :class:`MethodConfig` holds the method's ``name`` and ``kind`` only.
Each method declares its own options (loss weights, switches) as a dataclass sub-class of it in its own
module and registers it (:func:`register_method_options`, called by :mod:`udavae.methods`), so this
module knows no method's internals and ``method.<option>=value`` keys address the chosen kind's options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from udavae.dotted import coerce as _coerce
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


def register_method_options(kind: str, options: type[MethodConfig]) -> None:
    """Declare ``options`` (a :class:`MethodConfig` dataclass sub-class) as the options of method ``kind``."""
    if not (isinstance(options, type) and issubclass(options, MethodConfig) and dataclasses.is_dataclass(options)):
        raise TypeError(f"options of method kind {kind!r} must be a dataclass sub-class of MethodConfig")
    _METHOD_OPTIONS[kind] = options


def method_kinds() -> tuple[str, ...]:
    """The registered method kinds (after ``import udavae.methods``)."""
    return tuple(_METHOD_OPTIONS)


def method_options(kind: str) -> type[MethodConfig]:
    """The options dataclass of method ``kind``; ``ValueError`` naming the registered kinds if unknown."""
    if kind not in _METHOD_OPTIONS:
        known = ", ".join(_METHOD_OPTIONS) or "none registered (import udavae.methods first)"
        raise ValueError(f"method.kind={kind!r} is not one of {known}")
    return _METHOD_OPTIONS[kind]


def _default_method() -> MethodConfig:
    """The default method's options (the generic part only while no method kind is registered)."""
    kind = MethodConfig.kind
    return _METHOD_OPTIONS[kind]() if kind in _METHOD_OPTIONS else MethodConfig()


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
    preset: str = "udavae++"
    profile: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML / JSON."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ``ValueError``.

        Files written before the options moved into the methods list every kind's options under
        ``method``; the ones of other kinds are accepted and ignored, as :func:`apply_overrides` does.
        """
        cfg = cls()
        apply_overrides(cfg, flatten(d))
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` with a precise message on an inconsistent configuration."""
        _resolve_method(self)
        m, me, da, op = self.model, self.method, self.data, self.optim
        _choice("model.wiring", m.wiring, WIRINGS)
        _choice("model.mean_head", m.mean_head, MEAN_HEADS)
        if type(me) is not method_options(me.kind):
            raise ValueError(f"method options are {type(me).__name__}, not those of method.kind={me.kind!r} "
                             f"({method_options(me.kind).__name__}): change the kind with a method.kind override "
                             "(apply_overrides), which swaps the options")
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
        if da.jitter < 0:
            raise ValueError(f"data.jitter must be >= 0, got {da.jitter}")
        for name in ("batch_size", "epochs", "iters_per_epoch"):
            if getattr(op, name) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(op, name)}")
        if op.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {op.lr}")
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
    out: dict[str, Any] = {}
    for k, options in _METHOD_OPTIONS.items():
        for key, default in flatten(dataclasses.asdict(options()), "method.").items():
            if k != kind and key not in ("method.name", "method.kind"):
                out.setdefault(key, default)
    return out


def _resolve_method(cfg: Config) -> None:
    """Give a generic ``MethodConfig`` (built before its kind was registered) its kind's options class."""
    if type(cfg.method) is MethodConfig and cfg.method.kind in _METHOD_OPTIONS:
        cfg.method = _METHOD_OPTIONS[cfg.method.kind](name=cfg.method.name)


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


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys (``"model.base_width": 16``) in place, type-checked against the current values.

    ``method.kind`` is applied first and swaps ``cfg.method`` for that kind's options (see
    :func:`_set_method_kind`); ``method.<option>`` keys then address its fields. A ``method.*`` key that
    is an option of another registered kind only is type-checked and ignored: it has no effect on this
    kind, as before the options moved into the methods, and old ``config.yaml`` files list every kind's
    options. Any other unknown key raises ``ValueError``.
    """
    _resolve_method(cfg)
    items = sorted(overrides.items(), key=lambda kv: kv[0] != "method.kind")  # stable: the rest keep their order
    for key, value in items:
        parts = key.split(".")
        if key == "method.kind":
            _set_method_kind(cfg, value)
        elif _has_key(cfg, parts):
            _set_path(cfg, parts, key, value)
        elif key in (foreign := _other_kinds_keys(cfg.method.kind)):
            _coerce(key, foreign[key], value)  # still a clear error for a malformed value, then ignored
        else:
            raise _unknown_key(key, cfg)
    return cfg
