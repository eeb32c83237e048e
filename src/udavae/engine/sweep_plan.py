"""What a sweep trains: a grid of presets x variants x seeds, expanded into named runs, stored as ``sweep.json``.

A *grid* is a block ``{presets, seeds, variants, overrides}``; a sweep is one or more grids sharing the dataset,
domains, profile and evaluated splits. A *variant* is a named set of ``key=value`` overrides (an ablation) applied
to the grid's presets; without variants each preset runs as it is. Every run is an ordinary model folder
``SWEEP/runs/<preset>[+<variant>]_seed<N>`` and belongs to the *group* ``<preset>[/<variant>]`` that
``udavae compare`` aggregates over seeds.

The grid comes from the command line or from a YAML file such as::

    dataset: work/mscmrseg          # relative paths are relative to this file
    source: C0
    target: LGE
    profile: cpu
    splits: [val, test]
    overrides: {optim.epochs: 12}   # every run
    grids:
      - presets: [noadapt, udavae++]
        seeds: [0, 1, 2]
      - presets: [udavae++]
        seeds: [0]
        variants:
          no-prior: {method.mi_prior: false}

(without ``grids``, top-level ``presets`` / ``seeds`` / ``variants`` form the single grid).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from udavae.errors import UserError

PLAN_FILE = "sweep.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_GRID_KEYS = {"presets", "seeds", "variants", "overrides"}
_TOP_KEYS = {"dataset", "source", "target", "profile", "splits", "grids"} | _GRID_KEYS


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep.

    Attributes:
        name: folder name under ``SWEEP/runs`` (``<preset>[+<variant>]_seed<N>``).
        group: what ``compare`` aggregates over seeds (``<preset>[/<variant>]``).
        preset / variant / seed: the grid coordinates (``variant`` is ``""`` for none).
        overrides: ``key=value`` config overrides of this run (the sweep's, the grid's, then the variant's).
    """

    name: str
    group: str
    preset: str
    variant: str
    seed: int
    overrides: tuple[str, ...] = ()


@dataclass
class SweepPlan:
    """Everything a sweep runs; saved as ``SWEEP/sweep.json`` so ``--resume`` needs only the folder."""

    dataset: str
    source: str = "C0"
    target: str = "LGE"
    profile: str = "paper"
    splits: tuple[str, ...] = ("val", "test")
    runs: list[RunSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"] = list(self.splits)
        d["runs"] = [{**asdict(r), "overrides": list(r.overrides)} for r in self.runs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = PLAN_FILE) -> SweepPlan:
        try:
            runs = [RunSpec(**{**r, "overrides": tuple(r.get("overrides", ()))}) for r in d["runs"]]
            return cls(
                dataset=d["dataset"],
                source=d["source"],
                target=d["target"],
                profile=d["profile"],
                splits=tuple(d["splits"]),
                runs=runs,
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"{where} is not a sweep plan written by udavae sweep ({exc})") from None

    def run(self, name: str) -> RunSpec:
        return next(r for r in self.runs if r.name == name)

    def differences(self, other: SweepPlan) -> list[str]:
        """Why ``other`` cannot continue this plan (empty when it can: same settings, same or more runs)."""
        problems = [
            f"{k}: {getattr(self, k)!r} -> {getattr(other, k)!r}"
            for k in ("dataset", "source", "target", "profile", "splits")
            if getattr(self, k) != getattr(other, k)
        ]
        theirs = {r.name: r for r in other.runs}
        for r in self.runs:
            if r.name not in theirs:
                problems.append(f"run {r.name} would be dropped")
            elif theirs[r.name] != r:
                problems.append(
                    f"run {r.name} changes: overrides {list(r.overrides)} -> {list(theirs[r.name].overrides)}"
                )
        return problems


def _as_list(value: Any, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _override_items(value: Any, what: str) -> list[str]:
    """``{key: value}`` or ``["key=value", ...]`` -> ``["key=value", ...]`` (YAML booleans as ``true``/``false``)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in value.items()]
    items = _as_list(value, what)
    bad = [i for i in items if not isinstance(i, str) or "=" not in i]
    if bad:
        raise UserError(f"{what}: expected key=value items, got {bad}")
    return items


def _seeds(value: Any, what: str) -> list[int]:
    seeds = []
    for s in _as_list(value, what):
        try:
            seeds.append(int(s))
        except (TypeError, ValueError):
            raise UserError(f"{what}: seed {s!r} is not an integer") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{what}: repeated seeds {seeds}")
    return seeds


def _check_name(name: str, what: str) -> str:
    if not _NAME_RE.match(name):
        raise UserError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' only (it names run folders)")
    return name


def expand_grid(grid: dict[str, Any], common: list[str], where: str) -> list[RunSpec]:
    """The runs of one grid block, seed-major (every preset of seed 0 first), so early results are comparable."""
    from udavae.methods.presets import PRESETS

    unknown = set(grid) - _GRID_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; a grid has {sorted(_GRID_KEYS)}")
    presets = [str(p) for p in _as_list(grid.get("presets"), where)]
    if not presets:
        raise UserError(f"{where}: no presets given")
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        raise UserError(f"{where}: unknown preset(s) {bad}; choose from {', '.join(PRESETS)}")
    seeds = _seeds(grid.get("seeds", [0]), where)
    if not seeds:
        raise UserError(f"{where}: no seeds given")
    own = _override_items(grid.get("overrides"), f"{where} overrides")
    variants = grid.get("variants") or {"": {}}
    if not isinstance(variants, dict):
        raise UserError(f"{where}: variants must map a name to its key=value overrides")
    runs = []
    for seed in seeds:
        for preset in presets:
            for vname, vover in variants.items():
                vname = _check_name(str(vname), f"{where}: variant") if vname else ""
                items = _override_items(vover, f"{where} variant {vname}")
                name = f"{preset}{'+' + vname if vname else ''}_seed{seed}"
                group = f"{preset}/{vname}" if vname else preset
                runs.append(RunSpec(name, group, preset, vname, seed, tuple(common + own + items)))
    return runs


def build_plan(spec: dict[str, Any], base_dir: Path | None = None, where: str = "sweep") -> SweepPlan:
    """Validate a sweep description (the YAML file's dict, or the CLI's) and expand it into runs.

    Every run's configuration is built once here, so a misspelt key or a bad value fails before any training.

    Args:
        spec: the keys documented in this module.
        base_dir: folder relative dataset paths are resolved against (the YAML file's); default: the cwd.
        where: name of the description in error messages.
    """
    from udavae.config import parse_overrides
    from udavae.methods.presets import PROFILES, build_config

    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    if not spec.get("dataset"):
        raise UserError(f"{where}: no dataset given (--dataset or 'dataset:' in the grid file)")
    dataset = Path(str(spec["dataset"])).expanduser()
    if not dataset.is_absolute():
        dataset = (base_dir or Path.cwd()) / dataset
    profile = str(spec.get("profile") or "paper")
    if profile not in PROFILES:
        raise UserError(f"{where}: unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    splits = tuple(str(s) for s in _as_list(spec.get("splits") or ["val", "test"], where))
    common = _override_items(spec.get("overrides"), f"{where} overrides")
    grids = spec.get("grids")
    if grids is None:
        grids = [{k: spec[k] for k in ("presets", "seeds", "variants") if k in spec}]
    elif any(k in spec for k in ("presets", "seeds", "variants")):
        raise UserError(f"{where}: give either 'grids' or top-level presets/seeds/variants, not both")
    runs = [r for i, g in enumerate(_as_list(grids, where)) for r in expand_grid(g, common, f"{where} grid {i + 1}")]
    seen: dict[str, RunSpec] = {}
    for r in runs:
        if r.name in seen:
            raise UserError(f"{where}: run {r.name} appears twice in the grid")
        seen[r.name] = r
        try:
            build_config(r.preset, profile, {"runtime.seed": r.seed, **parse_overrides(list(r.overrides))})
        except (ValueError, UserError) as exc:
            raise UserError(f"{where}: run {r.name}: {exc}") from None
    return SweepPlan(
        dataset=str(dataset.resolve()),
        source=str(spec.get("source") or "C0"),
        target=str(spec.get("target") or "LGE"),
        profile=profile,
        splits=splits,
        runs=runs,
    )


#: ``udavae evaluate --split`` names that are not dataset splits.
_SPECIAL_SPLITS = ("source-holdout",)


def check_plan_data(plan: SweepPlan) -> None:
    """Check what the runs will read, before the first one trains: the dataset, its source and target domains,
    the target splits every run is evaluated on (with labels), and the presets.

    Without this a typo'd split or a missing dataset is found only when each run has trained.

    Raises:
        UserError / DataError: naming the dataset and what is missing, with what is there.
    """
    from udavae.data.spec import DatasetSpec
    from udavae.methods.presets import PRESETS

    bad_presets = sorted({r.preset for r in plan.runs if r.preset not in PRESETS})
    if bad_presets:
        raise UserError(f"unknown preset(s) {bad_presets}; choose from {', '.join(PRESETS)}")
    spec = DatasetSpec.load(plan.dataset)
    if plan.source == plan.target:
        raise UserError(f"source and target domains are both {plan.source!r}")
    for role, domain in (("source", plan.source), ("target", plan.target)):
        if domain not in spec.domains:
            raise UserError(
                f"the {role} domain {domain!r} is not in the dataset {spec.root} "
                f"(domains: {', '.join(spec.domains) or 'none'})"
            )
    if not any(c.label for c in spec.cases(plan.source)):
        raise UserError(f"the source domain {plan.source!r} of {spec.root} has no labelled case to train on")
    have = spec.splits.get(plan.target, {})
    missing = [s for s in plan.splits if s not in have and s not in _SPECIAL_SPLITS]
    if missing:
        raise UserError(
            f"evaluated split(s) {missing} are not splits of the target domain {plan.target!r} in "
            f"{spec.root} (splits: {', '.join([*have, *_SPECIAL_SPLITS])}); every run is evaluated on "
            "them after training"
        )
    unlabelled = [s for s in plan.splits if s in have and any(c.label is None for c in spec.split(plan.target, s))]
    if unlabelled:
        raise UserError(
            f"evaluated split(s) {unlabelled} of {plan.target!r} in {spec.root} hold cases without "
            "labels: they cannot be evaluated"
        )


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML grid file into a dict, with errors naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file {path} not found")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"grid file {path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise UserError(f"grid file {path} must hold a mapping (dataset:, presets:, seeds: ...)")
    return spec
