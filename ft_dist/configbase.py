"""The base class every typed config section derives from.

Sections are pydantic models that reject unknown keys and validate types and ranges, so a
typo in a YAML file or an override fails loudly with the key's dotted path.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, values are frozen."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)
