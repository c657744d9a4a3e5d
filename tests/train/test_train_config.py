"""The `train:` section's ticket choice for single runs and DST Ensemble members."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ft_dist.train.config import TrainConfig


def test_single_runs_keep_the_best_validation_epoch_by_default() -> None:
    # main_DST.py:304-311 saves model.pth whenever validation accuracy improves.
    assert TrainConfig().ticket == "best"
    assert TrainConfig(ticket="last").ticket == "last"


def test_unknown_ticket_choice_names_the_key() -> None:
    with pytest.raises(ValidationError, match="ticket"):
        TrainConfig(ticket="final")
