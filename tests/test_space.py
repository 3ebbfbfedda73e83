"""Search-space files: loading, validation errors naming their key, define-by-run suggestions."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from kdtune.config import MODEL_KEYS, TRAIN_KEYS
from kdtune.losses import LOSSES
from kdtune.search.spacefile import (
    SearchSpace,
    SpaceError,
    load_space,
    packaged_spaces,
    parse_space,
)
from kdtune.search.trainable import split_config

ROOT = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)

VALID = """
params:
  lr:    {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  dim:   {type: categorical, choices: [4, 8]}
  alpha: {type: float, low: 0.1, high: 0.9}
  loss:  {type: categorical, choices: [soft_bce, rd]}
conditional:
  T:    {when: {loss: [soft_bce]}, type: float, low: 1.0, high: 5.0}
  rd_k: {when: {loss: [rd]}, type: int, low: 5, high: 10}
fixed:
  epochs: 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


@pytest.mark.parametrize("name", ["default", "smoke", "fast", "serving"])
def test_packaged_spaces_load_and_are_the_repo_copies(name: str) -> None:
    repo_copy = ROOT / "search_spaces" / f"{name}.yaml"
    assert not (ROOT / "kdtune" / "spaces").exists()  # one copy only
    assert name in packaged_spaces()
    by_name, by_path = load_space(name), load_space(repo_copy)
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.name == name
    for key in ("lr", "dim", "loss"):
        assert key in by_name.params
    # every distillation loss gets a KD weight: the shared alpha or its own <loss>_weight
    for loss in by_name.losses:
        assert "alpha" in by_name.params or LOSSES[loss].weight_key in by_name.conditional, loss
    assert set(by_name.losses) <= set(LOSSES)
    assert "bpr" not in by_name.losses  # plain students are the driver's baselines
    assert set(by_name.fixed) <= set(TRAIN_KEYS)
    assert by_name.describe().count("\n") >= len(by_name.params) + len(by_name.conditional)


def test_default_space_contents() -> None:
    space = load_space("default")
    assert space.dims() == [4, 8, 16, 32]
    assert space.lr_range() == (1e-3, 3e-2)
    assert set(space.losses) == set(LOSSES) - {"bpr"}
    # each loss its own KD weight (log scale) and, where it uses one, its own temperature; no shared ones
    assert "alpha" not in space.params and "T" not in space.conditional
    for name in space.losses:
        weight = space.conditional[LOSSES[name].weight_key]
        assert weight.when == {"loss": (name,)} and weight.log and weight.high / weight.low >= 100, name
        assert (LOSSES[name].temperature_key in space.conditional) == LOSSES[name].uses_temperature, name
    # every parameter of every searched loss is searched, except those left at the reference's defaults
    # (DE's temperature schedule and rows, RD's sample count, CD's label shift, RRD's per-user pool and users, DE-RRD's DE
    # weight, catalog_kd's users per batch: a cost, not a setting of the objective)
    at_defaults = {"de_tau_start", "de_tau_end", "de_rows", "rd_dynamic_samples", "cd_shift", "rrd_pool", "rrd_users",
                   "lambda_de", "catalog_kd_users"}
    searched = set(space.conditional)
    for name in space.losses:
        assert set(LOSSES[name].params) - at_defaults <= searched, name
    assert space.conditional["cd_guide"].choices == ("teacher", "student", "hybrid")


def test_serving_space_searches_exact_and_approximate_indexes() -> None:
    from kdtune.serving.index import IndexSpec

    space = load_space("serving")
    specs = [IndexSpec.parse(i) for i in space.indexes()]
    assert specs[0].name == "flat" and sum(not s.exact for s in specs) >= 2
    assert 64 in space.dims() and max(space.dims()) <= 64  # up to the teacher's size


def test_smoke_space_is_small() -> None:
    space = load_space("smoke")
    assert space.fixed["epochs"] <= 3
    assert len(space.dims()) <= 2 and len(space.losses) == 2


def test_valid_snippet_and_numeric_strings(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, _replace("low: 1.0e-3", "low: 1e-3")))  # YAML reads 1e-3 as text
    assert space.params["lr"].low == pytest.approx(1e-3)
    assert space.name == "space" and space.fixed == {"epochs": 2}


BAD = [
    # (case, yaml text, text the error must contain)
    ("unknown top-level key", VALID + "extra: 1\n", "extra"),
    ("params missing", "fixed: {epochs: 1}\n", "params"),
    ("not a mapping", "- 1\n- 2\n", "top level"),
    ("unknown type", _replace("type: float, low: 0.1", "type: uniform, low: 0.1"), "params.alpha.type"),
    ("unknown param key", _replace("high: 0.9}", "high: 0.9, scale: 2}"), "params.alpha.scale"),
    ("low >= high", _replace("low: 0.1, high: 0.9", "low: 0.9, high: 0.1"), "params.alpha.low"),
    ("low == high int", _replace("low: 5, high: 10", "low: 5, high: 5"), "conditional.rd_k.low"),
    ("missing high", _replace("low: 0.1, high: 0.9", "low: 0.1"), "params.alpha.high"),
    ("non-number bound", _replace("low: 0.1, high: 0.9", "low: a, high: 0.9"), "params.alpha.low"),
    ("int bound not integer", _replace("low: 5, high: 10", "low: 5.5, high: 10"), "conditional.rd_k.low"),
    (
        "log with low <= 0",
        _replace("low: 0.1, high: 0.9", "low: 0.0, high: 0.9, log: true"),
        "params.alpha.log",
    ),
    ("step with log", _replace("log: true}", "log: true, step: 0.001}"), "params.lr.step"),
    ("empty choices", _replace("choices: [4, 8]", "choices: []"), "params.dim.choices"),
    ("duplicate choices", _replace("choices: [4, 8]", "choices: [4, 4]"), "params.dim.choices"),
    ("dim not positive int", _replace("choices: [4, 8]", "choices: [4, 0.5]"), "params.dim"),
    ("unknown loss", _replace("[soft_bce, rd]}", "[soft_bce, rd, kd9]}"), "kd9"),
    (
        "loss not categorical",
        _replace("loss:  {type: categorical, choices: [soft_bce, rd]}", "loss: {type: int, low: 1, high: 2}"),
        "params.loss",
    ),
    (
        "when unknown param",
        _replace("when: {loss: [rd]}", "when: {losses: [rd]}"),
        "conditional.rd_k.when.losses",
    ),
    (
        "when value not a choice",
        _replace("when: {loss: [rd]}", "when: {loss: [rrd]}"),
        "conditional.rd_k.when.loss",
    ),
    (
        "when on non-categorical",
        _replace("when: {loss: [rd]}", "when: {alpha: [0.5]}"),
        "conditional.rd_k.when.alpha",
    ),
    (
        "conditional without when",
        _replace("{when: {loss: [rd]}, type: int", "{type: int"),
        "conditional.rd_k.when",
    ),
    (
        "when in params",
        _replace("alpha: {type: float", "alpha: {when: {loss: [rd]}, type: float"),
        "params.alpha.when",
    ),
    (
        "param of another loss",
        _replace("rd_k: {when: {loss: [rd]}", "cd_samples: {when: {loss: [rd]}"),
        "conditional.cd_samples",
    ),
    ("loss param for every loss", _replace("rd_k: {when: {loss: [rd]}, ", "rd_k: {"), "rd_k"),
    (
        "loss param top-level",
        _replace("  alpha:", "  rd_lambda: {type: float, low: 1.0, high: 9.0}\n  alpha:"),
        "params.rd_lambda",
    ),
    (
        "T for non-temperature loss",
        _replace("when: {loss: [soft_bce]}", "when: {loss: [soft_bce, rd]}"),
        "conditional.T",
    ),
    ("unknown key anywhere", VALID + "  epohcs: 3\n", "fixed.epohcs"),
    ("loss param fixed for all losses", VALID + "  rd_lambda: 2.0\n", "fixed.rd_lambda"),
    ("defined twice", VALID + "  alpha: 0.5\n", "fixed.alpha"),
    (
        "conditional repeats a param",
        VALID.replace(
            "conditional:\n", "conditional:\n  lr: {when: {loss: [rd]}, type: float, low: 0.1, high: 0.2}\n"
        ),
        "conditional.lr",
    ),
    ("missing lr", _replace("  lr:    {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n", ""), "lr"),
    ("missing dim", _replace("  dim:   {type: categorical, choices: [4, 8]}\n", ""), "dim"),
    (
        "missing loss",
        _replace("  loss:  {type: categorical, choices: [soft_bce, rd]}\n", "").split("conditional:")[0],
        "loss",
    ),
    ("missing alpha", _replace("  alpha: {type: float, low: 0.1, high: 0.9}\n", ""), "alpha"),
    ("fixed not scalar", VALID + "  epochs2: [1, 2]\n", "fixed.epochs2"),
    ("invalid yaml", "params: {lr: [\n", "not valid YAML"),
    ("unknown index", _replace("  alpha:", "  index: {type: categorical, choices: [flat, int4]}\n  alpha:"),
     "params.index"),
    ("index not categorical", _replace("  alpha:", "  index: {type: float, low: 8, high: 32}\n  alpha:"),
     "params.index"),
    ("precision is the index's", _replace("  alpha:", "  precision: {type: categorical, choices: [fp32, int8]}\n  alpha:"),
     "params.precision"),
]


def test_index_is_searched_or_fixed_and_checked() -> None:
    data = yaml.safe_load(VALID)
    assert parse_space(data).indexes() == ["flat"]  # a space that names none serves every student through flat
    data["params"]["index"] = {"type": "categorical", "choices": ["flat", "sq8", "hnsw32_ef64", "ivf1024_np16"]}
    assert parse_space(data).indexes() == ["flat", "sq8", "hnsw32_ef64", "ivf1024_np16"]
    data["params"]["index"]["choices"].append("pq4")
    with pytest.raises(SpaceError, match="params.index.*unknown index 'pq4'"):
        parse_space(data)
    del data["params"]["index"]
    data["fixed"]["index"] = "hnsw16_ef32"
    assert parse_space(data).indexes() == ["hnsw16_ef32"]


@pytest.mark.parametrize("section, entry", [("params", {"type": "categorical", "choices": ["fp32", "int8"]}),
                                            ("fixed", "bf16")])
def test_a_space_with_precision_is_refused_naming_index(section, entry) -> None:
    data = yaml.safe_load(VALID)
    data[section]["precision"] = entry
    with pytest.raises(SpaceError) as info:
        parse_space(data)
    message = str(info.value)
    assert "\n" not in message and f"{section}.precision" in message and "index" in message


@pytest.mark.parametrize("case,text,key", BAD, ids=[b[0] for b in BAD])
def test_validation_errors_name_their_key(tmp_path: Path, case: str, text: str, key: str) -> None:
    with pytest.raises(SpaceError, match=None) as info:
        load_space(_write(tmp_path, text))
    assert key in str(info.value), f"{case}: {info.value}"
    assert str(tmp_path / "space.yaml") in str(info.value)  # says which file


def test_alpha_optional_for_plain_bpr_only() -> None:
    data = yaml.safe_load(VALID)
    del data["params"]["alpha"], data["conditional"]
    data["params"]["loss"]["choices"] = ["bpr"]
    space = parse_space(data)
    assert space.losses == ["bpr"]


def test_unknown_name_lists_packaged(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="default"):
        load_space("no_such_space")
    with pytest.raises(SpaceError, match="no such file"):
        load_space(tmp_path / "missing.yaml")


def _expected_keys(space: SearchSpace, loss: str) -> set[str]:
    keys = set(space.params) | set(space.fixed)
    return keys | {n for n, p in space.conditional.items() if loss in p.when.get("loss", (loss,))}


@pytest.mark.parametrize("name", ["default", "smoke", "fast", "serving"])
def test_suggest_conditional_keys(name: str) -> None:
    space = load_space(name)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen = set()
    for _ in range(60):
        trial = study.ask()
        config = space.suggest(trial)
        loss = config["loss"]
        seen.add(loss)
        assert set(config) == _expected_keys(space, loss), loss
        assert set(config) == set(space.active_params(config)) | set(space.fixed)
        assert set(trial.params) == set(config) - set(space.fixed)  # fixed values are not searched
        assert config["dim"] in space.dims()
        lo, hi = space.lr_range()
        assert lo <= config["lr"] <= hi
        spec = LOSSES[loss]
        if "T" in config or spec.temperature_key in config:
            assert spec.uses_temperature
        # no ignored dimension: every key a trainer/model key, a parameter of this loss or its own weight or
        # temperature, and the trainable takes them all
        own = {spec.weight_key} | ({spec.temperature_key} if spec.uses_temperature else set())
        assert set(config) <= set(TRAIN_KEYS) | set(MODEL_KEYS) | set(spec.params) | own
        split_config(config)
        study.tell(trial, [0.1, 1.0])
    assert seen == set(space.losses)


def test_define_by_run_returns_fixed_only() -> None:
    space = load_space("smoke")
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    constants = space.define_by_run(trial)
    assert constants == space.fixed
    assert set(trial.params) == set(space.active_params(trial.params))
    no_fixed = SearchSpace(space.params, space.conditional, {})
    assert no_fixed.define_by_run(optuna.create_study().ask()) is None
    pickle.loads(pickle.dumps(space.define_by_run))  # Ray checkpoints the searcher with its space


def test_roundtrip_save_and_to_dict(tmp_path: Path) -> None:
    space = load_space("default")
    path = space.save(tmp_path / "run" / "space.yaml")
    back = load_space(path)
    assert back.to_dict() == space.to_dict()
    assert back.params == space.params and back.conditional == space.conditional
    assert parse_space(space.to_dict()).to_dict() == space.to_dict()
    assert yaml.safe_load(yaml.safe_dump(space.to_dict())) == space.to_dict()


def test_optuna_search_accepts_define_by_run() -> None:
    pytest.importorskip("ray.tune")
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("smoke")
    searcher = OptunaSearch(
        space=space.define_by_run, metric=["recall@20", "latency_ms"], mode=["max", "min"]
    )
    config = searcher.suggest("trial_1")  # no Ray cluster needed: the searcher only asks Optuna
    assert set(config) == _expected_keys(space, config["loss"])
    assert config["epochs"] == space.fixed["epochs"]


def test_warm_start_tries_every_loss_once_at_its_reference_settings() -> None:
    import optuna

    space = load_space("default")
    points = space.warm_start_points({name: spec.params for name, spec in LOSSES.items()})
    assert [p["loss"] for p in points] == space.losses
    rrd = next(p for p in points if p["loss"] == "rrd")
    # the reference's defaults where the space allows them, the (geometric) middle of every other range
    assert rrd["rrd_k"] == LOSSES["rrd"].params["rrd_k"] and rrd["rrd_l"] == LOSSES["rrd"].params["rrd_l"]
    assert rrd["dim"] == 16 and rrd["rrd_weight"] == pytest.approx(0.1) and rrd["lr"] == pytest.approx((1e-3 * 3e-2) ** 0.5)
    de = next(p for p in points if p["loss"] == "de")
    assert de["de_experts"] == 6  # the reference's 30 is outside the space's 2-10: the middle instead
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for point in points:
        study.enqueue_trial(point)
        trial = study.ask()
        config = space.suggest(trial)
        # every searched parameter the loss has, and only those, comes from the point
        assert {k: v for k, v in config.items() if k not in space.fixed} == point
        study.tell(trial, 0.0)
