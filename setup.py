"""The packages of the `ace3d` distribution (its metadata is in pyproject.toml): the import
package `pipeline`, and the top-level `conf/` (Hydra's configs, the one source) shipped inside
it as `pipeline/conf`, where `pipeline.config.CONF_DIR` finds it in an installed wheel."""

import os

from setuptools import find_namespace_packages, setup

groups = sorted(d for d in os.listdir("conf") if os.path.isdir(os.path.join("conf", d)))
setup(
    packages=[
        *find_namespace_packages(include=["pipeline", "pipeline.*"], exclude=["*.__pycache__"]),
        "pipeline.conf",
        *(f"pipeline.conf.{g}" for g in groups),
    ],
    package_dir={"pipeline.conf": "conf", **{f"pipeline.conf.{g}": f"conf/{g}" for g in groups}},
    package_data={
        "pipeline": ["py.typed"],
        "pipeline.models.weights": ["*.pt"],
        "pipeline.conf": ["*.yaml"],
        **{f"pipeline.conf.{g}": ["*.yaml"] for g in groups},
    },
)
