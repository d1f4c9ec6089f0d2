"""Typed settings: unknown keys named, text values converted to the declared types."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tcf.config import from_dict, load_yaml, merge, parse_overrides, to_dict
from tcf.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    layers: int = 2


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    seed: int | None = None
    flag: bool = False
    models: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_text_values_take_declared_types():
    cfg = from_dict(Outer, parse_overrides(["seed=3", "flag=yes", "models=a,b", "inner.lr=0.5", "name=7"]))
    assert cfg == Outer(name="7", seed=3, flag=True, models=["a", "b"], inner=Inner(lr=0.5))
    assert from_dict(Outer, {"seed": "none"}).seed is None
    assert from_dict(Outer, {"models": "[m1, m2]"}).models == ["m1", "m2"]


@pytest.mark.parametrize("data, match", [
    ({"sede": 1}, "unknown setting 'sede'"),
    ({"inner": {"lrr": 1}}, "unknown setting 'inner.lrr'"),
    ({"seed": "three"}, "seed: expected an integer"),
    ({"seed": 1.5}, "seed: expected an integer"),
    ({"flag": "maybe"}, "flag: expected true or false"),
    ({"inner": {"layers": "2.5"}}, "inner.layers: expected an integer"),
])
def test_bad_settings_are_named(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_overrides_merge_and_round_trip(tmp_path):
    (tmp_path / "c.yaml").write_text("name: base\ninner:\n  lr: 0.1\n  layers: 3\n")
    data = merge(load_yaml(tmp_path / "c.yaml"), parse_overrides(["inner.lr=0.2"]))
    cfg = from_dict(Outer, data)
    assert cfg.inner == Inner(lr=0.2, layers=3)
    assert from_dict(Outer, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_bad_yaml_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
