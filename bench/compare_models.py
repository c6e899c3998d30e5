"""Which concepts two models share, measured on the demo corpus (`ace3d compare`): the demo
model against the same network trained with another seed (the twin), and against a copy of the
demo model with every weight re-initialised (the control). A concept method that finds what a
model learned should match more of the twin's significant concepts than of the control's.

    .venv/bin/python -m pipeline.train dataset.synthetic.seed=1000 \\
        dataset.synthetic.videos_per_class=200 train.seed=1 train.output=/abs/twin.pt
    .venv/bin/python bench/compare_models.py --twin /abs/twin.pt [--out /abs/cmp]

Runs the default job three times on the demo corpus (the demo model, the twin, the control;
each in its own folder under --out, resumed when there), then compares the first with each.
The last line is `twin_share=<shared / the demo run's significant> control_share=<...>
ratio=<twin / control>`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from pipeline.compare import compare_runs  # noqa: E402
from pipeline.models.registry import DEMO_CHECKPOINT  # noqa: E402
from pipeline.run_folder import RunFolder  # noqa: E402


def randomised_copy(path: str, out: str, seed: int = 0) -> str:
    """The checkpoint at `path` with every weight re-initialised (torch's own initialisers,
    seeded): same architecture, classes and geometry, nothing learned."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    torch.manual_seed(seed)
    state = {}
    for name, tensor in ckpt["state_dict"].items():
        if not tensor.is_floating_point():
            state[name] = tensor  # counters
        elif tensor.dim() > 1:
            fresh = torch.empty_like(tensor)
            torch.nn.init.kaiming_uniform_(fresh, a=5 ** 0.5)  # nn.Conv/Linear's default
            state[name] = fresh
        elif name.endswith(("weight", "running_var")):  # a norm's scale, its variance
            state[name] = torch.ones_like(tensor)
        else:  # biases, a norm's shift and mean
            state[name] = torch.zeros_like(tensor)
    torch.save({**ckpt, "state_dict": state}, out)
    return out


def run(output_dir: str, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "pipeline", f"run.output_dir={output_dir}", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return output_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twin", required=True, help="the demo network trained with another seed")
    ap.add_argument("--out", default="outputs/compare-models")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    control = randomised_copy(DEMO_CHECKPOINT, os.path.join(a.out, "control.pt"))
    demo = run(os.path.join(a.out, "demo"))
    shares = {}
    for name, ckpt in (("twin", a.twin), ("control", control)):
        other = run(os.path.join(a.out, name), "model=checkpoint", f"model.path={ckpt}")
        _, summary = compare_runs(RunFolder(demo), RunFolder(other))
        shares[name] = summary["share_a_matched_significant"] or 0.0
        print(f"{name}: " + " ".join(f"{k}={v}" for k, v in summary.items()
                                     if k not in ("run_a", "run_b")))
    ratio = shares["twin"] / shares["control"] if shares["control"] else float("inf")
    twin, ctrl = shares["twin"], shares["control"]
    print(f"twin_share={twin:.3f} control_share={ctrl:.3f} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
