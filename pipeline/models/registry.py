"""The model registry: a name maps to a builder, a checkpoint source, the input geometry,
the normalisation, the class names and the layers worth explaining.

Like PyTorchVideo's hub, a thin table on top of builders. Pretrained weights load through
torch's hub cache (`torch.hub.load_state_dict_from_url`, `$TORCH_HOME/hub/checkpoints`), always
with `weights_only=True`; a file already in the cache is never fetched again (offline works).
Besides the table, four kinds of model come from files or code: `checkpoint` (a project
checkpoint written by `pipeline.train`), `torchscript`, `factory` (`package.module:function`
returning an `nn.Module`) and `demo` (the shipped project checkpoint).
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from pipeline.models.skeleton import skeleton
from pipeline.params import ParameterError

CHECKPOINT_FORMAT = "pipeline-checkpoint-v1"
DEMO_CHECKPOINT = os.path.join(os.path.dirname(__file__), "weights", "demo.pt")

KINETICS_MEAN = (0.45, 0.45, 0.45)  # PyTorchVideo's Kinetics models, on the 0-1 scale
KINETICS_STD = (0.225, 0.225, 0.225)
TV_VIDEO_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision's video models
TV_VIDEO_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's Swin3D weights
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about a model besides its weights."""

    name: str
    builder: Optional[Callable[..., nn.Module]]  # (num_classes=...) -> module with random weights
    checkpoint_url: Optional[str]  # published weights, loaded through torch's hub cache
    window: int  # input frames T
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layers: tuple[str, ...]  # recommended layers to explain, earliest first
    num_classes: int = 400
    class_names: Optional[tuple[str, ...]] = None
    state_dict_key: Optional[str] = None  # where the state dict sits inside the checkpoint
    source: str = "builtin"
    layout: str = "channels_first"  # how the layers lay out their outputs (pipeline.activations.extract.LAYOUTS)


@dataclass
class LoadedModel:
    """A model ready to run: `module` in eval mode plus what the pipeline needs to feed it."""

    module: nn.Module
    spec: ModelSpec
    class_names: list[str]
    layers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def _pytorchvideo(fn_name: str, classes_kwarg: str = "model_num_class") -> Callable[..., nn.Module]:
    def build(num_classes: int = 400) -> nn.Module:
        from pytorchvideo.models import hub

        return getattr(hub, fn_name)(pretrained=False, **{classes_kwarg: num_classes})

    return build


def _torchvision(fn_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 400) -> nn.Module:
        from torchvision.models import video

        return getattr(video, fn_name)(weights=None, num_classes=num_classes)

    return build


def _demo_builder(num_classes: int = 3, width: int = 16) -> nn.Module:
    from pipeline.models.demo import create_demo_convnet

    return create_demo_convnet(num_classes=num_classes, width=width)


def kinetics400_classes() -> tuple[str, ...]:
    """The 400 Kinetics class names in the index order of the published models."""
    from torchvision.models.video import R3D_18_Weights

    return tuple(R3D_18_Weights.KINETICS400_V1.meta["categories"])


_PTV = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_TV = "https://download.pytorch.org/models"


def _ptv(name: str, file: str, window: int, size: int, layers: Sequence[str]) -> ModelSpec:
    return ModelSpec(name, _pytorchvideo(name), f"{_PTV}/{file}", window, size, size, KINETICS_MEAN,
                     KINETICS_STD, tuple(layers), state_dict_key="model_state", source="pytorchvideo")


def _tv(name: str, file: str, window: int, size: int, layers: Sequence[str],
        mean: tuple[float, float, float] = TV_VIDEO_MEAN,
        std: tuple[float, float, float] = TV_VIDEO_STD, layout: str = "channels_first") -> ModelSpec:
    return ModelSpec(name, _torchvision(name), f"{_TV}/{file}", window, size, size, mean, std,
                     tuple(layers), source="torchvision", layout=layout)


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        # PyTorchVideo hub (Kinetics-400); blocks.0 is the stem, the last block the head.
        _ptv("x3d_xs", "X3D_XS.pyth", 4, 160, ["blocks.3", "blocks.4"]),
        _ptv("x3d_s", "X3D_S.pyth", 13, 160, ["blocks.3", "blocks.4"]),
        _ptv("x3d_m", "X3D_M.pyth", 16, 224, ["blocks.3", "blocks.4"]),
        _ptv("slow_r50", "SLOW_8x8_R50.pyth", 8, 224, ["blocks.3", "blocks.4"]),
        _ptv("i3d_r50", "I3D_8x8_R50.pyth", 8, 224, ["blocks.3", "blocks.4"]),
        _ptv("c2d_r50", "C2D_8x8_R50.pyth", 8, 224, ["blocks.3", "blocks.4"]),
        _ptv("r2plus1d_r50", "R2PLUS1D_16x4_R50.pyth", 16, 224, ["blocks.3", "blocks.4"]),
        _ptv("csn_r101", "CSN_32x2_R101.pyth", 32, 224, ["blocks.3", "blocks.4"]),
        # torchvision video models (Kinetics-400)
        _tv("r3d_18", "r3d_18-b3b3357e.pth", 16, 112, ["layer3", "layer4"]),
        _tv("mc3_18", "mc3_18-a90a0ba3.pth", 16, 112, ["layer3", "layer4"]),
        _tv("r2plus1d_18", "r2plus1d_18-91a641e6.pth", 16, 112, ["layer3", "layer4"]),
        _tv("s3d", "s3d-d76dad2f.pth", 16, 224, ["features.12", "features.15"]),
        # Video transformers. MViT: 16 blocks in four stages (0, 1-2, 3-13, 14-15), each returning
        # its tokens (a class token first) with their T x H x W grid; their input size is fixed.
        # The head reads the class token alone, so the last block's other tokens have no gradient:
        # the recommended layers are the end of stage 3 (384 channels, 8 x 14 x 14 tokens at 224)
        # and the first block of stage 4 (768, 8 x 7 x 7). MViT v1 (torchvision's and
        # PyTorchVideo's) widens a stage in its last block (blocks.13 gives 768 channels), so its
        # stage 3 ends at blocks.12; MViT v2 widens in the next stage's first block.
        # Swin3D: features.0/2/4/6 are its four stages, channels last; it was evaluated on 32 frames.
        _tv("mvit_v1_b", "mvit_v1_b-dbeb1030.pth", 16, 224, ["blocks.12", "blocks.14"], KINETICS_MEAN,
            KINETICS_STD, layout="tokens"),
        _tv("mvit_v2_s", "mvit_v2_s-ae3be167.pth", 16, 224, ["blocks.13", "blocks.14"], KINETICS_MEAN,
            KINETICS_STD, layout="tokens"),
        _tv("swin3d_t", "swin3d_t-7615ae03.pth", 32, 224, ["features.4", "features.6"], IMAGENET_MEAN,
            IMAGENET_STD, layout="channels_last"),
        ModelSpec("mvit_base_16x4", _pytorchvideo("mvit_base_16x4", "head_num_classes"), f"{_PTV}/MVIT_B_16x4.pyth",
                  16, 224, 224, KINETICS_MEAN, KINETICS_STD, ("blocks.12", "blocks.14"), state_dict_key="model_state",
                  source="pytorchvideo", layout="tokens"),
        # The project's demo model, trained on the synthetic corpus.
        ModelSpec("demo", _demo_builder, None, 16, 112, 112, (0.45, 0.45, 0.45), (0.225, 0.225, 0.225),
                  ("layer2", "layer3"), num_classes=3, source="project"),
    ]
}
FILE_KINDS = ("checkpoint", "torchscript", "factory")
MODEL_NAMES = tuple(REGISTRY) + FILE_KINDS


class ModelConfigError(ParameterError):
    """The model's settings name something that cannot be loaded: `name` is the setting
    (`layers`, `path`, `pretrained`, ...), the message says why."""


def check_layers(module: nn.Module, layers: Sequence[str], model_name: str) -> None:
    """Fail with close matches when a layer name is not a module of the model."""
    names = [n for n, _ in module.named_modules() if n]
    known = set(names)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            top = [n for n in names if "." not in n]
            raise ModelConfigError("layers", list(layers),
                                   f"layer {layer!r} is not a module of model {model_name!r}. "
                                   f"Close matches: {close or 'none'}. Top-level modules: {top}")


def _load_hub_state(url: str, key: Optional[str]) -> dict[str, torch.Tensor]:
    """Published weights through torch's hub cache (downloaded once, then offline)."""
    try:
        ckpt = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as e:  # offline with an empty cache, or an unsafe checkpoint
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        raise ModelConfigError("pretrained", True, f"cannot load the weights from {url} (expected in the cache at "
                                                   f"{cache}): {type(e).__name__}: {e}") from None
    return ckpt[key] if key else ckpt


def save_checkpoint(path: str, module: nn.Module, arch: str, class_names: Sequence[str],
                    spec: ModelSpec, arch_kwargs: Optional[dict[str, Any]] = None,
                    extra: Optional[dict[str, Any]] = None) -> None:
    """Write a project checkpoint: tensors and plain values only (loads with weights_only)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "class_names": list(class_names),
        "window": spec.window, "height": spec.height, "width": spec.width,
        "mean": list(spec.mean), "std": list(spec.std), "layers": list(spec.layers),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        "extra": dict(extra or {}),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".part"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_project_checkpoint(path: str) -> tuple[nn.Module, ModelSpec, list[str], dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelConfigError("path", path, f"cannot read the checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelConfigError("path", path, f"not a project checkpoint (format {CHECKPOINT_FORMAT}); use model "
                                             "torchscript for TorchScript files or factory for other code")
    arch = ckpt["arch"]
    if arch not in REGISTRY or REGISTRY[arch].builder is None:
        raise ModelConfigError("path", path, f"the checkpoint has an unknown architecture {arch!r}")
    base = REGISTRY[arch]
    class_names = list(ckpt["class_names"])
    module = base.builder(num_classes=len(class_names), **ckpt.get("arch_kwargs", {}))
    check_weights_fit(module, ckpt["state_dict"], path, arch)
    module.load_state_dict(ckpt["state_dict"])
    spec = replace(base, window=int(ckpt["window"]), height=int(ckpt["height"]), width=int(ckpt["width"]),
                   mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]), layers=tuple(ckpt["layers"]),
                   num_classes=len(class_names), class_names=tuple(class_names), checkpoint_url=None)
    return module, spec, class_names, dict(ckpt.get("extra", {}))


def check_weights_fit(module: nn.Module, state: dict[str, Any], path: str, arch: str) -> None:
    """ModelConfigError unless the checkpoint's weights have the architecture's names and shapes
    (say, a checkpoint of the demo network before 2026-12-02)."""
    own, theirs = ({k: tuple(v.shape) for k, v in d.items()} for d in (module.state_dict(), state))
    if own != theirs:
        differ = sorted(k for k in set(own) | set(theirs) if own.get(k) != theirs.get(k))
        raise ModelConfigError("path", path, f"its weights do not fit the {arch!r} architecture of this version "
                                             f"(they differ at {', '.join(differ[:4])}); retrain it")


def check_model_config(model_cfg: dict[str, Any], module: Optional[nn.Module] = None) -> None:
    """Fail before any work when `layers` names a module the model does not have.

    The model is built on torch's meta device (no memory, no weights, no download); only its
    module names are looked at. `module`: the model itself (name `module`), as the Python API
    is handed it.
    """
    layers = list(model_cfg.get("layers") or [])
    name = model_cfg["name"]
    if name == "module":
        if not isinstance(module, nn.Module):
            raise ModelConfigError("name", "module", f"needs a torch.nn.Module, got {type(module).__name__}")
        if not layers:
            raise ModelConfigError("layers", layers, "an nn.Module has no recommended layers; name the layers to "
                                                     "explain, e.g. layers=['layer3']")
    elif name in ("torchscript", "factory"):
        if not layers:
            raise ModelConfigError("layers", layers, f"model {name!r} has no recommended layers; name the layers to "
                                                     "explain, e.g. [layer3]")
        module = load_model({**model_cfg, "pretrained": False}).module
    else:
        if name in ("demo", "checkpoint"):
            path = model_cfg.get("path") or DEMO_CHECKPOINT
            try:
                ckpt = torch.load(path, map_location="meta", weights_only=True)
            except Exception as e:
                raise ModelConfigError("path", path, f"cannot read the checkpoint: {e}") from None
            if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
                raise ModelConfigError("path", path, f"not a project checkpoint (format {CHECKPOINT_FORMAT})")
            spec = REGISTRY.get(ckpt.get("arch", ""))
            if spec is None or spec.builder is None:
                raise ModelConfigError("path", path, f"the checkpoint has an unknown architecture {ckpt.get('arch')!r}")
            layers = layers or list(ckpt["layers"])
            kwargs = {"num_classes": len(ckpt["class_names"]), **ckpt.get("arch_kwargs", {})}
        else:
            spec = REGISTRY[name]
            layers = layers or list(spec.layers)
            kwargs = {"num_classes": spec.num_classes}
        assert spec.builder is not None
        module = skeleton(spec.builder, **kwargs)
        if name in ("demo", "checkpoint"):
            check_weights_fit(module, ckpt["state_dict"], path, spec.name)
    check_layers(module, layers, name)


def model_window(model_cfg: dict[str, Any]) -> int:
    """The model's input frames T, without building the model (the driver needs it to plan)."""
    if model_cfg.get("window"):
        return int(model_cfg["window"])
    name = model_cfg["name"]
    if name in ("demo", "checkpoint"):
        return int(_checkpoint(model_cfg)["window"])
    return REGISTRY[name].window if name in REGISTRY else 16


def model_class_names(model_cfg: dict[str, Any]) -> list[str]:
    """The model's class names without building it; [] where only its outputs could say (a
    TorchScript file, a factory or a module without `class_names`)."""
    if model_cfg.get("class_names"):
        return list(model_cfg["class_names"])
    name = model_cfg["name"]
    if name in ("demo", "checkpoint"):
        return list(_checkpoint(model_cfg)["class_names"])
    return [*kinetics400_classes()] if getattr(REGISTRY.get(name), "num_classes", 0) == 400 else []


def _checkpoint(model_cfg: dict[str, Any]) -> dict[str, Any]:
    path = model_cfg.get("path") or DEMO_CHECKPOINT
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # weights unread
    except Exception as e:
        raise ModelConfigError("path", path, f"cannot read the checkpoint: {e}") from None


def load_model(model_cfg: dict[str, Any], module: Optional[nn.Module] = None) -> LoadedModel:
    """Build the model a `model` config section describes, weights loaded, in eval mode (name
    `module`: wrap `module`, the model the Python API was handed, as it is).

    Overrides in the config (window, height, width, mean, std, layers, class_names) take
    precedence over the registry's values. Layer names are checked against the model.
    """
    name = model_cfg["name"]
    meta: dict[str, Any] = {}
    if name == "module":
        if not isinstance(module, nn.Module):
            raise ModelConfigError("name", "module", f"needs a torch.nn.Module, got {type(module).__name__}")
        spec = _custom_spec("module")
        class_names = []
    elif name == "demo":
        module, spec, class_names, meta = _load_project_checkpoint(model_cfg.get("path") or DEMO_CHECKPOINT)
    elif name == "checkpoint":
        module, spec, class_names, meta = _load_project_checkpoint(model_cfg["path"])
    elif name == "torchscript":
        try:
            module = torch.jit.load(model_cfg["path"], map_location="cpu")
        except Exception as e:
            raise ModelConfigError("path", model_cfg["path"], f"cannot load it as TorchScript: {e}") from None
        spec = _custom_spec("torchscript")
        class_names = []
    elif name == "factory":
        module = _from_factory(model_cfg["factory"])
        spec = _custom_spec("factory")
        class_names = []
    elif name in REGISTRY:
        spec = REGISTRY[name]
        assert spec.builder is not None
        module = spec.builder(num_classes=spec.num_classes)
        if model_cfg.get("pretrained"):
            module.load_state_dict(_load_hub_state(spec.checkpoint_url, spec.state_dict_key))
        class_names = list(kinetics400_classes()) if spec.num_classes == 400 else []
    else:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=3)
        raise ModelConfigError("name", name, f"unknown model; close matches: {close}")

    spec = _apply_overrides(spec, model_cfg)
    if model_cfg.get("class_names"):
        class_names = list(model_cfg["class_names"])
    if not class_names:
        n = _num_outputs(module)
        class_names = [f"class_{i}" for i in range(n)] if n else []
    layers = list(model_cfg.get("layers") or spec.layers)
    if not layers:
        raise ModelConfigError("layers", layers, f"model {name!r} has no recommended layers; name some")
    check_layers(module, layers, name)
    module.eval()
    return LoadedModel(module=module, spec=spec, class_names=class_names, layers=layers, meta=meta)


def _custom_spec(kind: str) -> ModelSpec:
    return ModelSpec(kind, None, None, window=16, height=112, width=112, mean=KINETICS_MEAN,
                     std=KINETICS_STD, layers=(), source=kind)


def _apply_overrides(spec: ModelSpec, cfg: dict[str, Any]) -> ModelSpec:
    changes: dict[str, Any] = {}
    for key in ("window", "height", "width"):
        if cfg.get(key):
            changes[key] = int(cfg[key])
    for key in ("mean", "std"):
        if cfg.get(key):
            changes[key] = tuple(float(v) for v in cfg[key])
    if cfg.get("layout"):
        changes["layout"] = str(cfg["layout"])
    return replace(spec, **changes) if changes else spec


def _from_factory(path: str) -> nn.Module:
    mod_name, _, fn_name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ModelConfigError("factory", path, f"cannot import it: {e}") from None
    module = fn()
    if not isinstance(module, nn.Module):
        raise ModelConfigError("factory", path, f"returned {type(module).__name__}, not an nn.Module")
    return module


def _num_outputs(module: nn.Module) -> int:
    """Classes of the last Linear layer (0 when there is none)."""
    last = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else 0
