"""3D ACE (spatio-temporal concept-based explanation of 3D ConvNets) at corpus scale on Ray.

    from pipeline import explain, open_run

`explain(videos, model, output_dir, ...)` runs the job (`python -m pipeline`) from Python and
returns a `Run`; `open_run(path)` reads a finished one; `score_videos(run, videos, output_dir)`
explains new videos with a finished run (`python -m pipeline.score`; see `pipeline.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.3.0"

__all__ = ["explain", "open_run", "score_videos", "Run"]


def __getattr__(name: str) -> Any:
    # The API pulls in Ray, Hydra and torch: imported when first asked for, so that a worker
    # importing one algorithm module does not pay for them.
    if name in __all__:
        from pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
