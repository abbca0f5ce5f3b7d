"""``make bench`` rewrites its sections of docs/benchmarks.md and keeps the notes around them."""

from __future__ import annotations

from pathlib import Path

from dev.bench.harness import Layout, write


def test_a_new_run_replaces_its_own_section_and_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\nintro\n\n<!-- make bench: proxy -->\nold\n<!-- make bench: proxy end -->"
        "\n\n## Notes\n\n<!-- make bench: decisions -->\nkept\n"
        "<!-- make bench: decisions end -->\n"
    )
    write(doc, "new", "proxy")
    assert doc.read_text() == (
        "# Benchmarks\n\nintro\n\n<!-- make bench: proxy -->\nnew\n<!-- make bench: proxy end -->"
        "\n\n## Notes\n\n<!-- make bench: decisions -->\nkept\n"
        "<!-- make bench: decisions end -->\n"
    )


def test_a_section_not_there_yet_is_added_at_the_end(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write(doc, "table", "proxy")
    write(doc, "other", "decisions")
    text = doc.read_text()
    assert "<!-- make bench: proxy -->\ntable\n<!-- make bench: proxy end -->" in text
    assert text.index("table") < text.index("other")


def test_the_proxy_under_test_gets_a_core_that_wrk_and_the_instances_do_not_use() -> None:
    two = Layout.for_cores([0, 1])
    assert two.proxy == (1,) and two.load == two.instances == (0,)
    four = Layout.for_cores([0, 1, 2, 3])
    assert len({four.proxy, four.load, four.instances}) == 3
