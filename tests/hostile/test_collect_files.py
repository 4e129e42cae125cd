"""Hostile files on disk: a NUL byte in one CSV row, symlink loops in the tree being collected."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

from hostile_limits import run_python

from lmforge.collect.files import FilesConfig, iter_files


def collect(tmp_path: Path, **cfg) -> list:
    cfg.setdefault("paths", ["in"])
    return list(iter_files(FilesConfig(**cfg), tmp_path))


def test_a_nul_byte_costs_one_csv_row_not_the_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "rows.csv").write_bytes(b"id,text\n1,first row\n2,bad\x00row\n3,third row\n")
    (d / "rows.tsv").write_bytes(b"text\tid\nfirst tab\t1\nbad\x00tab\t2\nthird tab\t3\n")
    recs = collect(tmp_path)
    assert sorted(r.text for r in recs if r.drop_reason is None) == ["first row", "first tab", "third row",
                                                                     "third tab"]
    bad = sorted((Path(r.url).name, r.drop_reason, r.meta.get("line")) for r in recs if r.drop_reason)
    assert bad == [("rows.csv", "nul_byte", 3), ("rows.tsv", "nul_byte", 3)]


def test_a_quoted_field_over_many_lines_costs_its_row_and_leaves_the_process_csv_limit_alone(tmp_path):
    """The cap on a row that runs over lines is lmforge's own: `csv.field_size_limit` is global, and
    lowering it once made every later CSV reader in the process (the built-in eval sets) fail."""
    d = tmp_path / "in"
    d.mkdir()
    field = "\n".join(["twenty characters.."] * 6)  # 6 lines of 20, each under the limit, 119 in all
    (d / "rows.csv").write_text(f'id,text\n1,first row\n2,"{field}"\n3,third row\n', encoding="utf-8")
    (d / "ok.csv").write_text('id,text\n1,"two\nlines"\n', encoding="utf-8")
    before = csv.field_size_limit()
    recs = collect(tmp_path, max_line_bytes=64)
    assert csv.field_size_limit() == before
    assert sorted(r.text for r in recs if r.drop_reason is None) == ["first row", "third row", "two\nlines"]
    bad = [(Path(r.url).name, r.drop_reason, r.meta.get("line"), r.meta["error"]) for r in recs if r.drop_reason]
    assert bad[0] == ("rows.csv", "bad_csv_row", 6,  # the line that took the row past 64 characters
                      "row running over several lines is longer than max_line_bytes 64")
    assert {reason for _, reason, _, _ in bad[1:]} == {"no_text_field"}  # the field's tail, read afresh as rows
    assert list(csv.reader(io.StringIO(f'"{"x" * 100}"\n'))) == [["x" * 100]]  # other readers keep their limit


def test_a_binary_file_named_csv_is_still_one_quarantine_record(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "blob.csv").write_bytes(b"text\n" + bytes(range(256)) * 64)
    recs = collect(tmp_path)
    assert [(r.drop_reason, Path(r.url).name) for r in recs] == [("binary_file", "blob.csv")]


def loop_tree(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("top file", encoding="utf-8")
    (d / "sub" / "b.txt").write_text("nested file", encoding="utf-8")
    os.symlink("..", d / "sub" / "up")  # a directory link back to its own ancestor
    os.symlink("self.txt", d / "self.txt")  # a link to itself
    return d


def test_symlink_loops_in_a_directory_are_counted_not_followed(tmp_path, caplog):
    loop_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lmforge.collect"):
        recs = collect(tmp_path)
    kept = sorted((r.url.split("/in/")[-1], r.text) for r in recs if r.drop_reason is None)
    assert kept == [("a.txt", "top file"), ("sub/b.txt", "nested file")]
    loops = sorted(r.url.split("/in/")[-1] for r in recs if r.drop_reason == "symlink_loop")
    assert loops == ["self.txt", "sub/up"]
    assert len(recs) == 4
    assert sum("symlink loop" in m for m in caplog.messages) == 2


def test_a_recursive_glob_lists_each_file_once(tmp_path):
    loop_tree(tmp_path)
    recs = collect(tmp_path, paths=["in/**/*.txt"])
    kept = sorted(r.url.split("/in/")[-1] for r in recs if r.drop_reason is None)
    assert kept == ["a.txt", "sub/b.txt"]
    assert sorted(r.url.split("/in/")[-1] for r in recs if r.drop_reason) == ["self.txt", "sub/up"]


def test_two_loops_do_not_explode_a_recursive_glob(tmp_path):
    """Every loop doubles the paths a naive `**` walk finds: 2**40 before the kernel's ELOOP stops it."""
    d = loop_tree(tmp_path)
    (d / "other").mkdir()
    os.symlink("..", d / "other" / "back")
    code = (
        "import json\n"
        "from pathlib import Path\n"
        "from lmforge.collect.files import FilesConfig, iter_files\n"
        f"recs = iter_files(FilesConfig(paths=['in/**/*.txt']), Path({str(tmp_path)!r}))\n"
        "print(json.dumps([[r.url, r.drop_reason] for r in recs]))\n"
    )
    measured = run_python(code, timeout=30, address_space_mb=6000)
    print(f"{measured.seconds:.1f} s, rc {measured.returncode}")
    assert not measured.timed_out and measured.returncode == 0, measured.stderr[-2000:]
    records = json.loads(measured.stdout.strip().splitlines()[-1])
    assert sorted(u.split("/in/")[-1] for u, r in records if r is None) == ["a.txt", "sub/b.txt"]
    assert sorted(u.split("/in/")[-1] for u, r in records if r) == ["other/back", "self.txt", "sub/up"]
