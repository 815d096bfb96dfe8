"""The base of every config model: frozen, and unknown fields are errors (a typo fails loudly with its path)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
