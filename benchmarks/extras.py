"""Per-config extras: numbers that only make sense for one config, derived from its timed row.

`EXTRAS` maps a config's label (as in the table: `ssd_mnist`, not `ssd_mnist:tiny`) to an `Extra`:
`measure(config, result, args)` returns entries added to the config's result (the JSON), after
its timing; `footnote(result)` writes them under the table. A new extra is one entry here.

SSD time to accuracy (`ssd_mnist`): jvision's wall time to reach the tutorial's mAP 0.8817 as
`--ssd_steps_to_target` × jvision's measured ms/step, against the tutorial's schedule (the
config's `total_steps`, 80,000) × the PyTorch eager ms/step measured in the same run. Train steps
only: evaluation time is excluded on both sides.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

SSD_TARGET_MAP = 0.8817  # The tutorial's reported test mAP.
# configs/ssd_mnist_short.py (documented result): "mAP after 5 epochs: 0.8936", its first
# evaluation, at 5 × 800 = 4,000 steps (on its 10-epoch schedule: the rate is halved at epoch 4).
SSD_STEPS_TO_TARGET = 4000
SSD_STEPS_SOURCE = (
    "configs/ssd_mnist_short.py: mAP 0.8936 at its first evaluation, after 5 epochs = 4,000 steps "
    "(10-epoch schedule; an upper bound, earlier steps were not evaluated)"
)


class Extra(NamedTuple):
    measure: Callable[[Any, dict, Any], dict]  # (config, result, args) -> entries for result
    footnote: Callable[[dict], str]  # (result, with those entries) -> a footnote


def ssd_time_to_accuracy(config: Any, result: dict, args: Any) -> dict:
    """Time to the tutorial's mAP (module docstring) at the step times just measured."""
    tutorial_steps = int(config.total_steps)
    return {
        "ssd_time_to_accuracy": {
            "target_map": SSD_TARGET_MAP,
            "jvision_steps": args.ssd_steps_to_target,
            "jvision_steps_source": args.ssd_steps_source,
            "jvision_s": args.ssd_steps_to_target * result["jvision_ms"] / 1e3,
            "tutorial_steps": tutorial_steps,
            "tutorial_s_at_eager_step": tutorial_steps * result["eager_ms"] / 1e3,
            "jvision_s_tutorial_schedule": tutorial_steps * result["jvision_ms"] / 1e3,
        }
    }


def ssd_time_to_accuracy_note(result: dict) -> str:
    ssd = result["ssd_time_to_accuracy"]
    return (
        f"SSD time to the tutorial's mAP {ssd['target_map']}: jvision "
        f"{ssd['jvision_steps']:,} steps × {result['jvision_ms']:.1f} ms = "
        f"{ssd['jvision_s'] / 60:.1f} min; the tutorial's {ssd['tutorial_steps']:,} steps "
        f"× PyTorch eager {result['eager_ms']:.1f} ms = "
        f"{ssd['tutorial_s_at_eager_step'] / 60:.1f} min "
        f"({ssd['tutorial_s_at_eager_step'] / ssd['jvision_s']:.1f}× longer); jvision on "
        f"the tutorial's schedule: {ssd['jvision_s_tutorial_schedule'] / 60:.1f} min. "
        f"Train steps only, evaluation excluded. jvision's steps: "
        f"{ssd['jvision_steps_source']}."
    )


EXTRAS: dict[str, Extra] = {
    "ssd_mnist": Extra(ssd_time_to_accuracy, ssd_time_to_accuracy_note),
}
