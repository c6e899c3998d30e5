"""What every parameter set of the method shares: its checks raise `ParameterError` in the
set's own terms (the field's name), and it is read from a config section or group.

A parameter set is a dataclass beside the functions that use it (`SegmentParams` in
`pipeline.segmentation.supervoxels`, `ConceptParams` in `pipeline.concepts.params`, ...): the
one place that defines its fields, units and defaults, and its `check()`. The config schema
(`pipeline.config`) reuses these dataclasses as its groups and turns a `ParameterError` into a
`ConfigError` naming the config key; the Python API turns it into an error naming the argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

# A field's metadata for a setting that changes no output (how the work is cut and scheduled): it
# stays out of the stage's fingerprint, so it may change between runs of one folder.
SCHEDULING = {"scheduling": True}


class ParameterError(ValueError):
    """A parameter holds a value the method cannot run with. `name` is the field's name in its
    parameter set (`n_segments`, `layers`, ...), `value` the value, `why` the rule it breaks."""

    def __init__(self, name: str, value: Any, why: str) -> None:
        self.name, self.value, self.why = name, value, why
        super().__init__(f"{name} = {value!r}: {why}")


def require(ok: bool, name: str, value: Any, why: str) -> None:
    """Raise `ParameterError(name, value, why)` unless `ok`."""
    if not ok:
        raise ParameterError(name, value, why)


def from_section(cls: type[T], section: Any, **changes: Any) -> T:
    """An instance of the parameter set `cls` from a config section, with `changes`: a plain
    dict (its missing keys keep their defaults) or a typed group that extends the set
    (`ActivateConfig` is `ActivateParams` plus its scheduling settings). Keys or fields the set
    does not have are left out."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = ({k: v for k, v in section.items() if k in names} if isinstance(section, Mapping)
              else {n: getattr(section, n) for n in names})
    return cls(**{**values, **changes})


def output_settings(cls: type, section: Mapping[str, Any]) -> dict[str, Any]:
    """The values of `section` for the fields of `cls` that change outputs (every field not
    marked `SCHEDULING`): what a stage's fingerprint holds."""
    return {f.name: section[f.name] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if not f.metadata.get("scheduling") and f.name in section}
