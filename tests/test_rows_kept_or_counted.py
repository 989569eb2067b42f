"""Every row is used or counted, and labels mean one thing each (issue 15, items 2 and 11)."""

import pytest

from textpipe.sources import SourceConfig, read_examples

STRAY_QUOTES = {
    # line 7 opens a quote; where the next quote lands decides what csv says
    "text after the closing quote": 'ENTY,"Who is it ?"',
    "never closed": "ENTY,Who is it ?",
    "closed, then an extra column": 'ENTY,Who is it ?",third',
}


@pytest.mark.parametrize("kind", sorted(STRAY_QUOTES))
def test_a_stray_quote_skips_its_row_and_keeps_the_rows_it_swallowed(kind, tmp_path):
    lines = ["label,text"] + [f"NUM,question {i} ?" for i in range(300)]
    lines[7] = 'DESC,"What is love ?'
    if kind != "never closed":
        lines[81] = STRAY_QUOTES[kind]
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    skipped: dict = {}
    used = list(read_examples(path, config=SourceConfig(on_bad_row="skip"), skipped=skipped))
    assert len(used) + sum(skipped.values()) == 300, skipped
    assert 8 not in [ex.line for ex in used] and 9 in [ex.line for ex in used]  # lines[7] is line 8 of the file
