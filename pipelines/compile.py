"""Compile the pipeline to the YAML the KFP UI uploads, for a given GPU node pool."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from medkfp.pipelines import configs as c
from medkfp.pipelines.pipeline import build_pipeline


def compile_pipeline(out: str | Path = "pipeline.yaml", gpu_node: c.GpuNode | None = None) -> Path:
    """Write the compiled pipeline to `out`; `gpu_node` places the train task (default:
    one nvidia.com/gpu, tolerating the nvidia.com/gpu taint). Returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(gpu_node), str(out))
    return out
