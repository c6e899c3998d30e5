"""`python -m pipeline.train`: train a video classifier on a corpus, or evaluate one.

    python -m pipeline.train                                  # demo net on the synthetic corpus
    python -m pipeline.train dataset=folder dataset.root=/data/ucf train.output=/tmp/model.pt
    python -m pipeline.train model=demo train.epochs=0        # evaluate the shipped demo model

With `train.epochs > 0` the architecture of `model` is trained from scratch on a stratified
split of the corpus (`train.holdout_fraction` of each class held out, `train.val_fraction` of
the rest set aside for validation) and evaluated on the held-out part. Every epoch prints its
loss and its train, validation and held-out accuracy; the weights of the epoch with the best
validation accuracy (lowest validation loss on a tie) are kept, and training stops after
`train.patience` epochs without a higher validation accuracy, counted from epoch
`train.min_epochs` on. `train.output` receives a project
checkpoint with that history (load it with `model=checkpoint model.path=...`). With
`train.epochs=0` the configured model is loaded as it is and evaluated on every clip of the
corpus.

The last line printed is `accuracy=<held-out accuracy> shuffled_accuracy=<accuracy on the
same clips with their frames shuffled in time>`: a model that uses motion falls to chance
on shuffled clips.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.config import CONF_DIR, ConfigError, register_configs, to_plain, validate
from pipeline.data.corpus import resolve_corpus
from pipeline.data.video import ClipSpec, VideoError, read_clip
from pipeline.models import clip_to_input
from pipeline.models.registry import REGISTRY, LoadedModel, ModelConfigError, load_model, save_checkpoint

log = logging.getLogger("pipeline.train")


def load_clips(rows: list[dict[str, Any]], spec: ClipSpec) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decode every readable video's clip (uint8 [N, T, H, W, 3]); unreadable ones are
    logged and left out of training."""
    clips, kept = [], []
    for row in rows:
        try:
            clips.append(read_clip(row["path"], spec).frames)
            kept.append(row)
        except VideoError as e:
            log.warning("skipping %s: %s", row["path"], e)
    if not clips:
        raise RuntimeError("no readable video in the corpus")
    return np.stack(clips), kept


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out), `fraction` of each class held out (at least one)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = max(1, int(round(fraction * len(idx))))
        held.extend(idx[:n_held])
        train.extend(idx[n_held:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def validation_split(train_idx: np.ndarray, labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `fraction` of each class's training clips (at least one)
    set aside for early stopping. Nothing is set aside when `fraction` is 0 or a class has
    fewer than three training clips."""
    if fraction <= 0:
        return train_idx, train_idx[:0]
    counts = np.bincount(labels[train_idx])
    if counts[counts > 0].min() < 3:
        log.info("too few clips per class for a validation split: training on all, no early stopping")
        return train_idx, train_idx[:0]
    fit_pos, val_pos = stratified_split(labels[train_idx], fraction, seed)
    return train_idx[fit_pos], train_idx[val_pos]


def shuffle_time(clips: np.ndarray, seed: int) -> np.ndarray:
    """The same clips with the frames of each put in a random (seeded) order."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(clips)
    for i in range(len(clips)):
        out[i] = clips[i][rng.permutation(clips.shape[1])]
    return out


@torch.inference_mode()
def logits_of(model: nn.Module, clips: np.ndarray, mean, std, batch_size: int = 8) -> torch.Tensor:
    """The model's logits [N, classes] for uint8 clips [N, T, H, W, 3], in eval mode, batched."""
    model.eval()
    return torch.cat([model(clip_to_input(clips[i:i + batch_size], mean, std))
                      for i in range(0, len(clips), batch_size)])


def predict(model: nn.Module, clips: np.ndarray, mean, std, batch_size: int = 8) -> np.ndarray:
    return logits_of(model, clips, mean, std, batch_size).argmax(1).numpy()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and right-angle rotations in space: they keep the class (which is about
    motion relative to the actor's own heading)."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2] and torch.rand(1, generator=gen).item() < 0.5:
        x = x.transpose(-1, -2)
    return x


def _evaluate(model: nn.Module, split: tuple[np.ndarray, np.ndarray], mean, std) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model on a split."""
    clips, labels = split
    logits = logits_of(model, clips, mean, std)
    y = torch.as_tensor(labels, dtype=torch.long)
    return float((logits.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


def fit(model: nn.Module, clips: np.ndarray, labels: np.ndarray, mean, std, epochs: int, batch_size: int,
        lr: float, weight_decay: float, seed: int,
        monitor: Optional[dict[str, tuple[np.ndarray, np.ndarray]]] = None,
        select: Optional[str] = None, patience: int = 0,
        min_epochs: int = 0) -> list[dict[str, float]]:
    """AdamW under a one-cycle schedule; after every epoch the accuracy on each `monitor` split
    is logged. With `select` (one of the monitor splits) the weights of the epoch with the best
    accuracy there are kept (the lower loss there on a tie), and training stops after `patience`
    epochs without a higher accuracy (0: runs every epoch), counted from epoch `min_epochs` on: a
    model that learns late is not stopped on its first epochs' plateau. Returns one row per epoch
    run."""
    monitor = monitor or {}
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * int(np.ceil(len(clips) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    history: list[dict[str, float]] = []
    best_key, best_state, since_best = None, None, 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(clips), generator=gen).numpy()
        total, correct, t0 = 0.0, 0, time.time()
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = _augment(clip_to_input(clips[idx], mean, std), gen)
            y = y_all[idx]
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        row = {"epoch": epoch + 1, "loss": total / len(order), "train": correct / len(order)}
        for name, split in monitor.items():
            row[name], row[f"{name}_loss"] = _evaluate(model, split, mean, std)
        history.append(row)
        shown = "  ".join(f"{name} accuracy {row[name]:.3f}" for name in ("train", *monitor))
        log.info("epoch %d/%d  loss %.4f  %s  (%.1f s)", epoch + 1, epochs, row["loss"], shown, time.time() - t0)
        if select is None:
            continue
        key = (row[select], -row[f"{select}_loss"])
        higher = best_key is None or row[select] > best_key[0]  # best_key[0]: the best accuracy so far
        if best_key is None or key > best_key:
            best_key, best_state = key, {k: v.detach().clone() for k, v in model.state_dict().items()}
            kept = row["epoch"]
        if higher:
            since_best = 0
        elif row["epoch"] > min_epochs:
            since_best += 1
            if patience and since_best >= patience:
                log.info("stopping early: no higher %s accuracy for %d epochs", select, patience)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        log.info("kept the weights of epoch %d (%s accuracy %.3f, loss %.4f)", kept, select, best_key[0],
                 -best_key[1])
    return history


def run(cfg: DictConfig) -> dict[str, float]:
    validate(cfg)
    c = to_plain(cfg)
    tc = c["train"]
    torch.manual_seed(tc["seed"])
    if tc["num_threads"]:
        torch.set_num_threads(tc["num_threads"])
    corpus = resolve_corpus(c["dataset"])
    rows = list(corpus.rows)
    if tc["epochs"] > 0:
        name = c["model"]["name"]
        if name not in REGISTRY or REGISTRY[name].builder is None:
            raise ModelConfigError("name", name, f"cannot train it from scratch; use one of {sorted(REGISTRY)}")
        base = REGISTRY[name]
        class_names = corpus.classes
        module = base.builder(num_classes=len(class_names))
        loaded = LoadedModel(module, base, class_names, list(base.layers))
    else:
        loaded = load_model(c["model"])
    spec = loaded.spec
    clip_spec = ClipSpec(**{**c["clip"], "num_frames": spec.window, "height": spec.height, "width": spec.width})
    t0 = time.time()
    clips, rows = load_clips(rows, clip_spec)
    name_to_idx = {n: i for i, n in enumerate(loaded.class_names)}
    missing = sorted({r["label"] for r in rows} - set(name_to_idx))
    if missing:
        raise ModelConfigError("class_names", loaded.class_names, f"do not include the corpus classes {missing}")
    labels = np.array([name_to_idx[r["label"]] for r in rows])
    log.info("decoded %d clips of %dx%dx%d in %.1f s", len(clips), spec.window, spec.height, spec.width,
             time.time() - t0)

    history: list[dict[str, float]] = []
    if tc["epochs"] > 0:
        train_idx, held_idx = stratified_split(labels, tc["holdout_fraction"], tc["seed"])
        fit_idx, val_idx = validation_split(train_idx, labels, tc["val_fraction"], tc["seed"] + 2)
        monitor = {"validation": (clips[val_idx], labels[val_idx])} if len(val_idx) else {}
        monitor["held-out"] = (clips[held_idx], labels[held_idx])
        stopping = f"patience {tc['patience']} after epoch {tc['min_epochs']}" if len(val_idx) else "every epoch runs"
        log.info("training on %d clips, %d for validation (%s), %d held out", len(fit_idx), len(val_idx), stopping,
                 len(held_idx))
        t0 = time.time()
        history = fit(loaded.module, clips[fit_idx], labels[fit_idx], spec.mean, spec.std, tc["epochs"],
                      tc["batch_size"], tc["lr"], tc["weight_decay"], tc["seed"], monitor=monitor,
                      select="validation" if len(val_idx) else None, patience=tc["patience"],
                      min_epochs=tc["min_epochs"])
        train_seconds = time.time() - t0
    else:
        held_idx = np.arange(len(clips))
        train_seconds = 0.0
    held_clips, held_labels = clips[held_idx], labels[held_idx]
    acc = float((predict(loaded.module, held_clips, spec.mean, spec.std) == held_labels).mean())
    shuffled = shuffle_time(held_clips, tc["seed"] + 1)
    shuffled_acc = float((predict(loaded.module, shuffled, spec.mean, spec.std) == held_labels).mean())
    log.info("held-out clips: %d  training time: %.1f s", len(held_idx), train_seconds)
    if tc["epochs"] > 0 and tc["output"]:
        save_checkpoint(tc["output"], loaded.module, c["model"]["name"], loaded.class_names, spec,
                        extra={"accuracy": acc, "shuffled_accuracy": shuffled_acc,
                               "train_seconds": train_seconds, "train_videos": int(len(fit_idx)),
                               "validation_videos": int(len(val_idx)), "epochs_run": len(history),
                               "history": history, "dataset": str(c["dataset"]["name"]),
                               "dataset_seed": int(c["dataset"]["synthetic"]["seed"])})
        log.info("checkpoint written to %s", tc["output"])
    print(f"accuracy={acc:.4f} shuffled_accuracy={shuffled_acc:.4f}", flush=True)
    return {"accuracy": acc, "shuffled_accuracy": shuffled_acc, "train_seconds": train_seconds}


register_configs()


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, ModelConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from pipeline.commands.cli import run_module

    sys.exit(run_module("train", sys.argv[1:]))
