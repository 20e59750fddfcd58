"""Deployable artifacts: a plan compiled by TVM into a directory that runs without the model.

    manifest = compile_artifact(model, plan, "out/")       # model.so, plan.npz, manifest.json, report.md
    art = load_artifact("out/")                            # no PyTorch model is built or imported
    outputs = art.run(*arrays)

Both sides are split off the CLI so that the demo and tests use exactly what ``tvmptq compile``
and ``tvmptq run`` do.
"""
from .artifact import ARTIFACT_FORMAT, Artifact, ArtifactError, compile_artifact, load_artifact
from .inputs import load_inputs, preprocessing_for

__all__ = ["ARTIFACT_FORMAT", "Artifact", "ArtifactError", "compile_artifact", "load_artifact",
           "load_inputs", "preprocessing_for"]
