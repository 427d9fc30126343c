"""The status vocabularies: final and dead-letter sets, and a drawing that names every status."""

from __future__ import annotations

import re

import pytest

import core.statuses as statuses
from core.statuses import (
    DELIVERY_DEAD_LETTER,
    DELIVERY_FINAL,
    EVENT_FINAL,
    JOB_DEAD_LETTER,
    JOB_FINAL,
    DeliveryStatus,
    EventStatus,
    JobStatus,
)


def test_final_sets_are_as_the_design_says() -> None:
    assert JOB_FINAL == {"succeeded", "failed", "dead"}
    assert DELIVERY_FINAL == {"delivered", "failed", "dead"}
    assert EVENT_FINAL == {"routed", "ignored", "failed"}
    # dead letters: what ended without success, and nothing else
    assert JOB_DEAD_LETTER == {"failed", "dead"}
    assert DELIVERY_DEAD_LETTER == {"failed", "dead"}


@pytest.mark.parametrize(
    ("machine", "final"),
    [(JobStatus, JOB_FINAL), (DeliveryStatus, DELIVERY_FINAL), (EventStatus, EVENT_FINAL)],
)
def test_final_statuses_belong_to_their_machine(machine: type, final: frozenset[str]) -> None:
    assert all(isinstance(status, machine) for status in final)
    assert set(final) < set(machine)  # some status is not final, or nothing could run


@pytest.mark.parametrize(
    ("title", "machine"),
    [("A job", JobStatus), ("A delivery", DeliveryStatus), ("An event", EventStatus)],
)
def test_the_drawing_in_the_docstring_names_every_status(title: str, machine: type) -> None:
    doc = statuses.__doc__ or ""
    start = doc.index(title)
    drawing = doc[start : doc.find("\n\n", doc.index("::", start) + 3)]
    drawn = set(re.findall(r"[a-z]+", drawing))
    assert {str(status) for status in machine} <= drawn


def test_members_are_their_words() -> None:
    # records, Lua and JSON carry the plain word: a member must compare and print as it
    assert JobStatus.SUCCEEDED == "succeeded"
    assert f"{DeliveryStatus.DELIVERING}" == "delivering"
    assert str(EventStatus.ROUTED) == "routed"
