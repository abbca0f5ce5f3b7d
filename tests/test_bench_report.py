"""``make bench`` rewrites its section of docs/benchmarks.md and keeps the notes around it."""

from __future__ import annotations

from pathlib import Path

from dev.bench.proxy import MARK_END, MARK_START, Layout, write


def test_a_new_run_replaces_the_last_results_and_keeps_the_notes(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{MARK_START}\nold table\n{MARK_END}\n\n## Notes\n")
    write(doc, "new table")
    assert doc.read_text() == (
        f"# Benchmarks\n\nintro\n\n{MARK_START}\nnew table\n{MARK_END}\n\n## Notes\n"
    )


def test_a_missing_file_is_created_with_the_results(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write(doc, "table")
    assert f"{MARK_START}\ntable\n{MARK_END}" in doc.read_text()


def test_the_proxy_under_test_gets_a_core_that_wrk_and_the_instances_do_not_use() -> None:
    two = Layout.for_cores([0, 1])
    assert two.proxy == (1,) and two.load == two.instances == (0,)
    four = Layout.for_cores([0, 1, 2, 3])
    assert len({four.proxy, four.load, four.instances}) == 3
