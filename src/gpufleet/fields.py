"""The base of every host-data model and the field types they share. Pure pydantic.

Engine modules define their settings on these, so the host spec can nest them without the
engines importing the host spec.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Port = Annotated[int, Field(ge=1, le=65535)]


class Spec(BaseModel):
    """Base of every host-data model: unknown keys are errors (typos fail loudly)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
