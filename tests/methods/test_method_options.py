"""Method options live in the methods: ``config.py`` stays generic, every ``method.*`` key users type still works,
and configs / model folders written before the move still load."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from udavae import config
from udavae.config import Config, MethodConfig, apply_overrides, flatten, method_kinds
from udavae.methods import METHODS, build_method
from udavae.methods.cfd import CFDOptions
from udavae.methods.noadapt import NoAdaptOptions
from udavae.methods.presets import PRESETS, build_config
from udavae.methods.vae import VAEOptions

#: ``method`` of a config.yaml written before the move: every kind's options, whatever the kind.
OLD_METHOD = {
    "name": "cfdnet",
    "kind": "cfd",
    "mi_global": False,
    "mi_local": False,
    "mi_prior": False,
    "mi_alpha": 0.5,
    "mi_beta": 1.0,
    "mi_gamma": 0.1,
    "prior": "uniform",
    "dist_pool": 4,
    "cf_band": 50.0,
    "cf_pool": 10,
    "weights": {
        "seg": 1000.0,
        "recon": 1.0,
        "kl": 1.0,
        "dist": [0.001, 0.001, 0.0001],
        "mi": 100.0,
        "cf": 1e-05,
        "mean_match": 1000.0,
    },
}


def test_config_knows_no_method_internals() -> None:
    assert {f.name for f in dataclasses.fields(MethodConfig)} == {"name", "kind"}
    source = inspect.getsource(config)
    for internal in ("uses_mi", "mi_global", "dist_pool", "cf_pool", "LossWeights", "METHOD_KINDS"):
        assert internal not in source, internal
    assert method_kinds() == tuple(METHODS)
    assert {"noadapt", "vae", "cfd", "sifa", "pnp_adanet"} <= set(METHODS)
    options = {k: c.Options for k, c in METHODS.items()}
    assert {k: options[k] for k in ("noadapt", "vae", "cfd")} == {
        "noadapt": NoAdaptOptions,
        "vae": VAEOptions,
        "cfd": CFDOptions,
    }
    assert all(o.__dataclass_fields__["kind"].default == k for k, o in options.items())


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_hold_their_kinds_options(preset: str) -> None:
    cfg = build_config(preset, "tiny")
    assert type(cfg.method) is METHODS[cfg.method.kind].Options
    assert Config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_todays_override_keys_keep_working() -> None:
    cfg = build_config(
        "udavae++",
        "tiny",
        {
            "method.mi_prior": "false",
            "method.weights.recon": "1.0",
            "method.weights.dist": "1,2,3",
            "method.prior": "normal",
        },
    )
    assert (cfg.method.mi_prior, cfg.method.weights.recon, cfg.method.weights.dist) == (False, 1.0, (1.0, 2.0, 3.0))
    assert cfg.method.uses_mi and cfg.method.describe() == "SMIE=global+local"
    cfg = build_config("cfdnet", "tiny", {"method.cf_band": "50", "method.cf_pool": "4"})
    assert (cfg.method.cf_band, cfg.method.cf_pool, cfg.method.weights.recon) == (50.0, 4, 1.0)
    # an option of another kind only is an error naming the method and its keys (it would have no effect)
    with pytest.raises(
        ValueError,
        match=r"method.mi_prior is not an option of method 'noadapt' \(kind 'noadapt'; "
        r"it belongs to vae\).*Keys of 'noadapt': method.weights.seg",
    ):
        build_config("noadapt", "tiny", {"method.mi_prior": "false"})
    with pytest.raises(ValueError, match="method.cf_band is not an option of method 'udavae\\+\\+'"):
        build_config("udavae++", "tiny", {"method.cf_band": "x"})
    # a saved config.yaml of an older version lists every kind's options: those are dropped with a warning
    saved = build_config("noadapt", "tiny").to_dict()
    saved["method"]["mi_prior"] = False
    with pytest.warns(UserWarning, match="dropped 1 key.*method.mi_prior"):
        assert Config.from_dict(saved).method == NoAdaptOptions(name="noadapt")
    with pytest.raises(ValueError, match="unknown config key 'method.mi_prio'; did you mean one of 'method.mi_prior'"):
        build_config("udavae++", "tiny", {"method.mi_prio": "false"})
    with pytest.raises(ValueError, match="method.kind='gan' is not one of cfd, gin_ipa, noadapt"):
        build_config("udavae++", "tiny", {"method.kind": "gan"})


def test_changing_the_kind_swaps_the_options_and_keeps_shared_keys() -> None:
    cfg = build_config("cfdnet", "tiny", {"method.kind": "vae", "method.weights.seg": "7"})
    assert type(cfg.method) is VAEOptions
    assert (cfg.method.name, cfg.method.weights.recon, cfg.method.weights.seg) == ("cfdnet", 1.0, 7.0)
    # the kind is applied first, whatever the order of the keys
    cfg = apply_overrides(Config(), {"method.cf_pool": 5, "method.kind": "cfd"})
    assert type(cfg.method) is CFDOptions and cfg.method.cf_pool == 5
    cfg = Config()
    cfg.method.kind = "cfd"  # an attribute, not an override: the options do not follow
    with pytest.raises(ValueError, match="method options are VAEOptions, not those of method.kind='cfd'"):
        cfg.validate()


def test_method_specific_validation_lives_in_the_method() -> None:
    with pytest.raises(ValueError, match=r"data.crop=64 must be divisible by 4\*method.dist_pool=20"):
        build_config("udavae++", "tiny", {"method.dist_pool": 5})
    with pytest.raises(ValueError, match="method.prior='flat' is not one of uniform, normal"):
        build_config("udavae++", "tiny", {"method.prior": "flat"})
    build_config("noadapt", "tiny", {"data.crop": 48, "data.jitter": 0})  # no pooling rule without the distance


def test_an_old_config_with_every_kinds_options_loads() -> None:
    old = build_config("cfdnet", "tiny").to_dict()
    old["method"] = OLD_METHOD
    cfg = Config.from_dict(old)
    assert cfg.method == CFDOptions(
        name="cfdnet", cf_band=50.0, cf_pool=10, weights=CFDOptions().weights.__class__(recon=1.0)
    )
    assert set(flatten(cfg.to_dict()["method"])) == {
        "name",
        "kind",
        "cf_band",
        "cf_pool",
        "weights.seg",
        "weights.recon",
        "weights.kl",
        "weights.cf",
        "weights.mean_match",
    }
    build_method(cfg, 4)


def test_a_model_folder_trained_before_the_move_loads(tmp_path: Path) -> None:
    """A run whose config.yaml lists every kind's options (as older versions wrote it) loads with a warning."""
    import warnings

    from udavae.api import train
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.model_folder import load_trained, read_model_folder

    generate_dataset(tmp_path / "data", n_source=2, n_target=2, size=64, slices=2, seed=5, n_val=1)
    run = tmp_path / "run"
    train(
        build_config(
            "noadapt",
            "tiny",
            {
                "data.dataset": str(tmp_path / "data"),
                "optim.epochs": 1,
                "optim.iters_per_epoch": 1,
                "optim.batch_size": 2,
                "data.crop": 48,
                "model.base_width": 4,
                "train.labelfree_cases": 0,
                "runtime.device": "cpu",
            },
        ),
        run,
    )
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["method"] = {**OLD_METHOD, "name": "noadapt", "kind": "noadapt"}  # written by the old code
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.warns(UserWarning, match="dropped .* key"):
        cfg, info = read_model_folder(run)
    assert type(cfg.method) is NoAdaptOptions and cfg.method.name == "noadapt"
    for checkpoint in ("best", "last"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cfg, info, method, state = load_trained(run, checkpoint, "cpu")
        assert method.kind == "noadapt" and isinstance(state["epoch"], int) and not method.training
