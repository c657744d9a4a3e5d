"""Tickets shipped as a sparse artifact and a `torch.export` program (`ft-dist export`).

from ft_dist.export import export_run, read_artifact
"""

from ft_dist.export.artifact import Artifact, ArtifactMember, read_artifact
from ft_dist.export.format import ArtifactError
from ft_dist.export.packed import PackError, pack_members
from ft_dist.export.program import (
    EnsembleProgram,
    PackedEnsembleProgram,
    ensemble_program,
    export_program,
    serving_program,
)
from ft_dist.export.run import export_run

__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactMember",
    "EnsembleProgram",
    "PackError",
    "PackedEnsembleProgram",
    "ensemble_program",
    "export_program",
    "pack_members",
    "export_run",
    "read_artifact",
    "serving_program",
]
