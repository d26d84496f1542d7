"""Compile the pipeline to the YAML the KFP UI uploads."""

from pathlib import Path

from kfp import compiler

from medkfp.pipelines.pipeline import medkfp_pipeline


def compile_pipeline(out: str | Path = "pipeline.yaml") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(medkfp_pipeline, str(out))
    return out
