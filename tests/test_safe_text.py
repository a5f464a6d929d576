"""Strings from data, on their way out: Markdown, HTML and CSV (issue 9, fault 2's kind)."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from cityviz.ui.objects import csv_bytes
from cityviz.ui.safe_text import csv_safe, html_escape, md_escape

HOSTILE = [
    "![b](http://127.0.0.1:9/x.png)",
    "[l](javascript:alert(1))",
    "<img src=x onerror=alert(1)>",
    "**bold** _it_ `code`",
    ":red[x] :material/home:",
    "$x^2$",
    "line\nbreak\r\x00\x07",
    "# heading",
    "a" * 400,
]


@pytest.mark.parametrize("text", HOSTILE)
def test_md_escape_leaves_no_markup_character_unescaped(text):
    out = md_escape(text)
    assert "\n" not in out and "\x00" not in out
    for ch in "[]()<>*_`:$#!":
        assert all(out[i - 1] == "\\" for i, c in enumerate(out) if c == ch), (ch, out)


@pytest.mark.parametrize("text", HOSTILE)
def test_html_escape_leaves_no_tag(text):
    out = html_escape(text)
    assert "<" not in out and ">" not in out and '"' not in out


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)",
                                  "\t=1", "\r=1"])  # fmt: skip
def test_csv_cells_cannot_run_as_formulas(cell):
    frame = pd.DataFrame({"city": [cell, "rome"], "rpc": [-0.5, 0.25], cell: [1, 2]})
    out = csv_safe(frame)
    assert out["city"].tolist() == ["'" + cell, "rome"]
    assert out["rpc"].tolist() == [-0.5, 0.25]  # numbers stay numbers
    assert out.columns[2] == "'" + cell
    assert frame["city"].iloc[0] == cell  # the caller's frame is not changed


def test_the_objects_csv_download_is_formula_safe():
    table = pd.DataFrame({"model_id": ["m"], "city": ["=cmd|' /C calc'!A0"], "object": ["@x"],
                          "rpc": [0.5]})  # fmt: skip
    back = pd.read_csv(io.BytesIO(csv_bytes(table, 0.5)))
    assert back.loc[0, "city"].startswith("'=") and back.loc[0, "object"] == "'@x"
    assert back.loc[0, "rpc"] == 0.5 and back.loc[0, "threshold"] == 0.5
