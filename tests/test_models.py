"""The family contract (`jvision.models.Contract`): every family meets it, and a module that does
not is named with exactly what it lacks or declares with other parameters."""

import types

import pytest

from jvision import models


@pytest.mark.parametrize("name", models.known())
def test_every_family_meets_the_contract(name):
    assert models.problems(models.module(name)) == []


def _complete_family() -> types.ModuleType:
    family = types.ModuleType("toy")
    for name, parameters in models._declared().items():
        if name in models.OPTIONAL:
            continue
        exec(f"def {name}({', '.join(parameters)}): pass", vars(family))
    return family


def test_a_complete_family_has_no_problems_and_binds_its_config():
    family = _complete_family()
    assert models.problems(family) == []
    family.predict = lambda config, model, batch, step: {"config": config, "step": step}
    config = {"name": "toy"}
    assert family.predict(config, None, {}, 3) == {"config": config, "step": 3}


def test_what_is_missing_or_mis_shaped_is_named():
    family = _complete_family()
    del family.draw_summaries
    family.predict = lambda model, batch: None  # Without the config and the step.
    family.eval_metrics = lambda config, model, batch, step: None  # Optional, but mis-shaped.
    assert models.problems(family) == [
        "predict(model, batch) should be predict(config, model, batch, step)",
        "draw_summaries is missing: define draw_summaries(config, outputs)",
        "eval_metrics(config, model, batch, step) should be "
        "eval_metrics(config, model, batch, key, step)",
    ]


def test_a_calibration_must_be_declared_as_one():
    family = _complete_family()
    family.calibration = {"statistics": None}
    assert models.problems(family) == ["calibration should be a jvision.models.Calibration"]


def test_get_binds_the_model_config_to_every_function():
    import ml_collections

    config = ml_collections.ConfigDict({"name": "vae", "dtype": "float32"})
    family = models.get(config)
    assert family.name == "vae"
    for name in ("train_loss", "predict", "image_summaries", "draw_summaries", "eval_metrics"):
        assert getattr(family, name).args == (config,)
    assert family.train_examples is None and family.calibration is None
