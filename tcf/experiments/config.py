"""Compatibility name: the run configuration lives in :mod:`tcf.run.config`, at the bottom of the
import graph, so that every stage (train, eval, zero-shot) imports it downward."""

from tcf.run.config import (  # noqa: F401 - re-exported for code written against the old path
    HEADS,
    LOSSES,
    MASK_RULES,
    NEGATIVES,
    PROTOCOLS,
    RANKERS,
    STRATEGIES,
    TASKS,
    TOWERS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    ZeroShotConfig,
    config_changes,
    load_config,
    mask_rule,
    resolved,
)
