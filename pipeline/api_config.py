"""The Python API's config: `explain()` and `score_videos()` arguments composed into the job's
config (conf/ with presets, then dicts merged on top), with errors that name the argument."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from pipeline.config import CONF_DIR, MODULE, ConfigError, register_configs

Videos = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def compose_config(
    videos: Videos,
    model_name: str,
    output_dir: Optional[str],
    layers: Optional[Sequence[str]],
    stages: Optional[Sequence[str]],
    overrides: dict[str, Any],
) -> Any:
    """The job's config: conf/ with the presets chosen, then every dict merged on top."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    dataset, dataset_keys = dataset_of(videos)
    presets = [f"dataset={dataset}"] + ([] if model_name == MODULE else [f"model={model_name}"])
    presets += [f"{group}={value}" for group, value in overrides.items() if isinstance(value, str)]
    for preset in presets:
        _check_preset(*preset.split("=", 1))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=presets)
    for group, value in overrides.items():
        if not isinstance(value, (str, dict)):
            raise ValueError(
                f"{group} = {value!r}: must be a preset name or a dict of {group} keys"
            )
    layers_ = {"model": {"layers": list(layers)}} if layers is not None else {}
    updates = [
        {"dataset": dataset_keys},
        layers_,
        {"run": {"output_dir": str(output_dir)}} if output_dir is not None else {},
        {"run": {"stages": list(stages)}} if stages is not None else {},
        *({group: value} for group, value in overrides.items() if isinstance(value, dict)),
    ]
    if model_name == MODULE:
        with open_dict(cfg):
            cfg.model.name = MODULE
    for update in updates:
        _check_keys(cfg, update)
        try:
            cfg = OmegaConf.merge(cfg, update)
        except OmegaConfBaseException as e:
            key = str(getattr(e, "full_key", "") or "")
            raise ConfigError(key or "?", str(e).splitlines()[0]) from None
    return cfg


def _check_preset(group: str, name: str) -> None:
    """A preset is a file conf/<group>/<name>.yaml; another name fails with the close matches."""
    import difflib

    known = sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, group)) if f.endswith(".yaml"))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise ConfigError(
            group if group != "model" else "model.name",
            f"unknown preset; close matches: {close or 'none'}; known: {known}",
            name,
        )


def _check_keys(node: Any, update: dict[str, Any], prefix: str = "") -> None:
    """An unknown key in an override fails naming it, with the close matches."""
    import difflib

    from omegaconf import DictConfig

    for key, value in update.items():
        if key not in node:
            known = [str(k) for k in node.keys()]
            close = difflib.get_close_matches(str(key), known, n=3)
            raise ConfigError(
                prefix + str(key), f"unknown key; close matches: {close or 'none'}; known: {known}"
            )
        if isinstance(value, dict) and isinstance(node[key], DictConfig):
            _check_keys(node[key], value, f"{prefix}{key}.")


def dataset_of(videos: Videos) -> tuple[str, dict[str, Any]]:
    """The dataset preset and keys for the `videos` argument."""
    if videos is None:
        return "synthetic", {}
    if isinstance(videos, (str, os.PathLike)):
        path = os.path.abspath(os.path.expanduser(str(videos)))
        if os.path.isfile(path) and path.lower().endswith(".csv"):
            return "csv", {"csv": path, "root": os.path.dirname(path)}
        if os.path.isdir(path):
            return "folder", {"root": path}
        raise ValueError(f"videos = {str(videos)!r}: no such folder or CSV file")
    paths = [os.path.abspath(os.path.expanduser(str(p))) for p in videos]
    return "list", {"videos": paths}


def argument_for(key: str, overrides: dict[str, Any]) -> str:
    """The explain() argument that holds a config key's value."""
    group, _, rest = key.partition(".")
    if group == "dataset" and rest.split(".")[0] in ("root", "csv", "videos", "kind"):
        return "videos"
    if key == "model.name":
        return "model"
    if key.startswith("model.layers") and "layers" not in (overrides.get("model") or {}):
        return "layers"
    if group == "model":
        group = "model_options"
    if key == "run.output_dir":
        return "output_dir"
    if key.startswith("run.stages"):
        return "stages" + key[len("run.stages") :]
    if not rest:
        return group
    parts = rest.replace("]", "").replace("[", ".").split(".")
    return group + "".join(f"[{p}]" if p.isdigit() else f"[{p!r}]" for p in parts)


def named_keys(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """The config keys an explain()/score_videos() call names: a preset names its group, a dict
    its leaves (`activate={"num_actors": 1}` names activate.num_actors only)."""
    out = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        out.extend(named_keys(value, name + ".") if isinstance(value, dict) else [name])
    return out


def shown(e: ConfigError) -> str:
    return "" if e.value is ConfigError._UNSET else f" = {e.value!r}"


def with_group_key(overrides: dict[str, Any], group: str, key: str, value: Any) -> dict[str, Any]:
    """The overrides with `<group>.<key>` set (the group given as a dict, or not at all)."""
    section = overrides.get(group) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{group} = {section!r}: a dict of {group} settings")
    return {**overrides, group: {**section, key: value}}
