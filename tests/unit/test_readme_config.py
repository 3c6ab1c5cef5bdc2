"""README's config table names every config field, and only fields that exist."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from pipeline.config import JobConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def config_fields() -> set[str]:
    """``section.field`` for every field of the job config's sections."""
    names = set()
    for section, info in JobConfig.model_fields.items():
        annotation = info.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), section
        names.update(f"{section}.{field}" for field in annotation.model_fields)
    return names


def documented_fields() -> set[str]:
    """The ``section.field`` names in the first cell of the README's config table rows."""
    sections = "|".join(JobConfig.model_fields)
    names = set()
    for line in README.read_text().splitlines():
        first_cell = line.split("|")[1] if line.startswith("| `") else ""
        names.update(re.findall(rf"`((?:{sections})\.[a-z_]+)`", first_cell))
    return names


def test_every_config_field_is_in_the_readme_table() -> None:
    assert config_fields() - documented_fields() == set()


def test_the_readme_table_names_no_field_that_does_not_exist() -> None:
    assert documented_fields() - config_fields() == set()
