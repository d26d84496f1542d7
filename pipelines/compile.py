"""Compile the pipeline to the YAML the KFP UI uploads, for given images and GPU node pool."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from medkfp.pipelines import configs as c
from medkfp.pipelines.pipeline import Images, build_pipeline


def images_for(image: str | None = None, gpu_image: str | None = None) -> Images:
    """The step images: `image` for every step (default: this version's), `gpu_image` for train
    (default: `image` with the GPU variant's `-gpu` tag suffix)."""
    default = Images()
    cpu = image or default.cpu
    return Images(cpu=cpu, gpu=gpu_image or (f"{cpu}-gpu" if image else default.gpu))


def compile_pipeline(
    out: str | Path = "pipeline.yaml",
    gpu_node: c.GpuNode | None = None,
    image: str | None = None,
    gpu_image: str | None = None,
) -> Path:
    """Write the compiled pipeline to `out` and return its path.

    `gpu_node` places the train task (default: one nvidia.com/gpu, tolerating the
    nvidia.com/gpu taint); `image` / `gpu_image` name the images (see images_for).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(gpu_node, images_for(image, gpu_image)), str(out))
    return out
