"""The reference pages made from the code (docs/reference/) are what the code makes now."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pipeline.reference_docs import DOCS, PAGES, field_words


@pytest.mark.parametrize("name", list(PAGES))
def test_the_reference_page_is_what_the_code_makes_now(name):
    with open(os.path.join(DOCS, name)) as f:
        written = f.read()
    assert written == PAGES[name](), f"docs/reference/{name} is stale: run `make docs`"


def test_a_fields_words_come_from_its_docstring_entry_its_comment_or_a_sentence_naming_it():
    @dataclasses.dataclass
    class Params:
        """What a made-up stage does. `depth` sets how far it looks.

        width, height (pixels): the frame size; stride: a step. speed_limit rarely matters.
        colour: what it paints,
        over two lines.
        """

        width: int = 1
        height: int = 2
        stride: int = 3
        colour: str = "red"
        depth: int = 4
        speed_limit: float = 5.0
        fast: bool = False  # go faster
        quiet: bool = True

    assert field_words(Params) == {
        "width": "the frame size;", "height": "the frame size;",
        "stride": "a step. speed_limit rarely matters.",
        "colour": "what it paints, over two lines.", "depth": "`depth` sets how far it looks.",
        "speed_limit": "speed_limit rarely matters.", "fast": "go faster"}
