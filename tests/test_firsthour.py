"""What a new user meets in the first hour, in-process: the sample folder, a document page as an
image query, the one rule for queries (str: text; Path or PIL image: image), the search output at
80 columns and piped, help without Python type names, plan with --model-name, compaction that
never grows a store, batch sizes within float rounding, counts and remembered failures.

The CLI as real processes (the README's try-out on a fresh account, bench's backend check,
main.py's and embed's lines, exit statuses) is in test_firsthour_cli.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from nomic_memory import Index, Store
from nomic_memory.cli import app
from nomic_memory.cli.results import print_results, wrap_path
from nomic_memory.errors import InputError, UsageError
from nomic_memory.ingest.pageref import resolve_page_ref, split_page_ref
from nomic_memory.ingest.samples import SampleConflict, try_out_files, write_try_out_folder
from nomic_memory.search.index import Hit
from nomic_memory.store.compact import compact_table
from nomic_memory.store.table import embedding_to_numpy

# The README's claim: stored vectors depend on the batch size only within float rounding, at most
# this far apart on the CPU in float32.
BATCH_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("try-out") / "samples"
    write_try_out_folder(d)
    return d


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory, loaded, samples) -> Path:
    store = tmp_path_factory.mktemp("try-out-store") / "store"
    report = loaded["colqwen"].embed_directory(samples, store=store, workers=0)
    assert report.embedded == 7 and not report.failed  # 4 photos + 3 pages
    return store


# ---------------------------------------------------------------- the sample folder
@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_samples_are_the_same_bytes_every_time_and_never_overwrite(tmp_path):
    a, b = try_out_files(), try_out_files()
    assert a == b and sorted(a) == [
        "photos/photo_1.jpg",
        "photos/photo_2.jpg",
        "photos/photo_3.jpg",
        "photos/photo_4.jpg",
        "report.pdf",
    ]
    written, there = write_try_out_folder(tmp_path / "s")
    assert len(written) == 5 and there == []
    assert {p.relative_to(tmp_path / "s").as_posix(): p.read_bytes() for p in written} == a
    written, there = write_try_out_folder(tmp_path / "s")  # again: nothing to do
    assert written == [] and len(there) == 5
    # a file of the user's where a sample would go: refused before anything is written
    mine = tmp_path / "t" / "photos" / "photo_2.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own photo")
    with pytest.raises(SampleConflict, match="photo_2.jpg"):
        write_try_out_folder(tmp_path / "t")
    assert mine.read_bytes() == b"my own photo"
    assert sorted(p.name for p in (tmp_path / "t").rglob("*") if p.is_file()) == ["photo_2.jpg"]


# ---------------------------------------------------------------- FILE#N
def test_page_references(samples, tmp_path):
    pdf = samples / "report.pdf"
    assert split_page_ref(f"{pdf}#3") == (pdf, 3)
    assert split_page_ref(pdf) == (pdf, None)
    assert resolve_page_ref(f"{pdf}#3") == (pdf, 3)
    assert resolve_page_ref(pdf) == (pdf, 1)  # a document without #N: its page 1
    photo = samples / "photos" / "photo_1.jpg"
    assert resolve_page_ref(photo) == (photo, 0)
    odd = tmp_path / "odd#2.png"  # a name that really ends in #N is taken whole
    Image.new("RGB", (32, 32)).save(odd)
    assert split_page_ref(odd) == (odd, None) and resolve_page_ref(odd) == (odd, 0)
    for ref, reason in (
        (f"{pdf}#4", "has 3 pages: #4 is not one of them"),
        (f"{pdf}#0", "is not one of them"),
        (f"{photo}#2", "has no pages"),
        (tmp_path / "nope.pdf", "no such file"),
    ):
        with pytest.raises(InputError, match=re.escape(reason)):
            resolve_page_ref(ref)


@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_a_document_page_is_an_image_query(loaded, sample_store, samples):
    emb = loaded["colqwen"]
    idx = emb.index(sample_store)
    pdf = samples / "report.pdf"
    for ref, page in ((Path(f"{pdf}#2"), 2), (Path(f"{pdf}#3"), 3), (pdf, 1)):
        top = idx.search(ref, k=1)[0]
        assert (top.path, top.page) == ("report.pdf", page), ref
        # drawn as the run drew it: the query is the stored page itself
        stored = idx.row_embedding(top.id)
        q = idx.embed_queries(ref)[0]
        np.testing.assert_allclose(q, stored, atol=1e-5, rtol=0)
    # the same in Embedder.embed_queries, texts and images mixed, in input order
    text, page2 = emb.embed_queries(["quarterly report", Path(f"{pdf}#2")])
    np.testing.assert_array_equal(page2, idx.embed_queries(Path(f"{pdf}#2"))[0])
    np.testing.assert_array_equal(text, idx.embed_queries("quarterly report")[0])
    # a str is always text: the same string as a Path is another query
    as_text = idx.embed_queries(f"{pdf}#2")[0]
    assert as_text.shape != page2.shape or not np.allclose(as_text, page2)
    pil = idx.embed_queries(Image.open(samples / "photos" / "photo_1.jpg"))[0]  # a PIL image: an image query
    assert pil.ndim == 2 and pil.shape[1] == 128 and pil.shape != as_text.shape
    with pytest.raises(UsageError, match="a query is a str"):
        idx.search(42)
    with pytest.raises(InputError, match="has 3 pages"):
        idx.search(Path(f"{pdf}#9"))


# ---------------------------------------------------------------- search output
def test_wrap_path_breaks_at_separators():
    assert wrap_path("/a/b/c.jpg", 40) == "/a/b/c.jpg"
    assert wrap_path("/home/someone/Pictures/IMG_1006_city_at_night.JPG", 26).split("\n") == [
        "/home/someone/Pictures/",
        "IMG_1006_city_at_night.JPG",
    ]
    assert wrap_path("/p/IMG_1006_city_at_night_and_day.JPG", 20).split("\n") == [
        "/p/",
        "IMG_1006_city_at_",
        "night_and_day.JPG",
    ]
    long = "x" * 30
    assert wrap_path(long, 12).split("\n") == ["x" * 12, "x" * 12, "x" * 6]  # one word wider: folded


def _hits() -> list[Hit]:
    root = "/home/someone/Pictures/holidays-2024"
    names = ["IMG_1006_city_at_night.JPG", "scans/reports/quarterly_report_of_the_northern_region.pdf", "a.png"]
    return [Hit(i + 1, 25.5 - i, name, root, 3 if name.endswith(".pdf") else 0) for i, name in enumerate(names)]


META = {"table": "t", "kind": "colqwen"}  # what print_results reads of a search's metadata


TIMING = {"load_seconds": 0.1, "embed_seconds": 0.1, "search_seconds": 0.1}


def test_search_table_at_80_columns_keeps_names_whole(capsys):
    from rich.console import Console

    console = Console(width=80, force_terminal=True, color_system=None, record=True)
    print_results(
        META, ["city"], [[h.to_dict() for h in _hits()]], approx=False, where=None, timing=TIMING, console=console
    )
    text = console.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    cells = "".join(line.split("│")[4].strip() for line in lines if line.count("│") == 5)
    for h in _hits():  # the full path, whole once the wrapped cell lines are joined
        assert h.file in cells, text
    for word in ("IMG_1006_city_at_night.JPG", "quarterly_report_of_the_northern_region.pdf"):
        assert any(word in line for line in lines), (word, text)  # fits the column: never cut


def test_search_piped_is_plain_lines_with_full_paths(capsys):
    print_results(META, ["city"], [[h.to_dict() for h in _hits()]], approx=False, where=None, timing=TIMING)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "query: city" and out[1].split() == ["rank", "score", "page", "file"]
    rows = [line.split(None, 3) for line in out[2:5]]
    assert [r[3] for r in rows] == [h.file for h in _hits()]
    assert [int(r[2]) for r in rows] == [0, 3, 0]
    assert "│" not in "\n".join(out)


@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_search_cli_image_page_and_a_filter_matching_nothing(sample_store, samples):
    runner = CliRunner()
    base = ["--store", str(sample_store), "--backend", "cpu"]
    r = runner.invoke(app, ["search", "--image", f"{samples}/report.pdf#2", *base, "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["queries"][0]["kind"] == "image" and out["queries"][0]["query"] == f"{samples}/report.pdf#2"
    assert (out["results"][0][0]["path"], out["results"][0][0]["page"]) == ("report.pdf", 2)
    r = runner.invoke(app, ["search", "x", *base, "--where", "page > 99"])
    assert r.exit_code == 0, r.output
    assert "No results: the filter matched no rows (--where page > 99)" in r.stdout
    for ref, why in ((f"{samples}/report.pdf#7", "has 3 pages"), (f"{samples}/gone.png", "no such file")):
        r = runner.invoke(app, ["search", "--image", ref, *base])
        assert r.exit_code == 1 and why in r.output and "Traceback" not in r.output, r.output


# ---------------------------------------------------------------- help
PYTHON_TYPES = re.compile(r"<(str|int|float|path|Path|text|integer|int range|float range|list\[.*?\])>")


def test_no_python_type_names_in_any_help():
    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield path, cmd

    seen = 0
    for path, cmd in walk(typer.main.get_command(app), []):
        help_text = cmd.get_help(click.Context(cmd, info_name=" ".join(path), terminal_width=80))
        assert not PYTHON_TYPES.search(help_text), f"{' '.join(path)}:\n{help_text}"
        seen += 1
    assert seen >= 13  # every command, store's included
    search = typer.main.get_command(app).commands["search"]
    text = search.get_help(click.Context(search, info_name="search"))
    assert "--image FILE" in text and "QUERY" in text and "--store PATH" in text


def test_plan_with_model_name_plans_that_model_only(tiny_colqwen):
    r = CliRunner().invoke(app, ["plan", "--model-name", str(tiny_colqwen), "--batch-sizes", "1,4", "--json"])
    assert r.exit_code == 0, r.output
    models = [json.loads(line)["model"] for line in r.stdout.splitlines()]
    assert models == [tiny_colqwen.name] * 2
    r = CliRunner().invoke(app, ["plan", "--model-name", str(tiny_colqwen), "--model-variant", "nomic-3b", "--json"])
    assert [json.loads(line)["model"] for line in r.stdout.splitlines()] == ["nomic-3b", tiny_colqwen.name]
    r = CliRunner().invoke(app, ["plan", "--json"])
    assert [json.loads(line)["model"] for line in r.stdout.splitlines()] == ["colnomic-7b"]


# ---------------------------------------------------------------- compaction
def _files(store: Path, table: str) -> list[Path]:
    return [p for p in (store / f"{table}.lance").rglob("*") if p.is_file()]


@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_compact_leaves_one_version_and_never_grows(loaded, image_dir, tmp_path):
    folder = shutil.copytree(image_dir, tmp_path / "imgs")
    store = Store(tmp_path / "store")
    emb = loaded["colqwen"]
    emb.embed_directory(folder, store=store, batch_size=2, workers=0)
    # a Lance vector index (its update commits a version after LanceDB's prune), then changed files
    Index.open(store).build_approx_index("lance", num_partitions=2, num_sub_vectors=4)
    for p in sorted(folder.rglob("*.png"))[:3]:
        p.write_bytes(p.read_bytes() + b"changed")
    emb.embed_directory(folder, store=store, batch_size=2, workers=0)
    t = store.only_table()
    # a data file a killed run wrote and never committed
    orphan = next(p for p in _files(store.path, t.name) if p.parent.name == "data").with_name("orphan.lance")
    orphan.write_bytes(b"\0" * 50_000)
    rows = t.count()
    before = store.disk_bytes(t.name)
    compact_table(t)
    after = store.disk_bytes(t.name)
    assert t.stats()["versions"] == 1 and t.fragment_count() == 1 and t.count() == rows
    assert after < before and not orphan.exists()
    files = sorted(_files(store.path, t.name))
    compact_table(t)  # nothing left to do: nothing changes
    assert store.disk_bytes(t.name) == after and sorted(_files(store.path, t.name)) == files
    assert Index.open(store).search(Path(next(folder.rglob("*.jpg"))), k=1)  # still searchable


@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_store_compact_command_reports_one_version(loaded, image_dir, tmp_path):
    store = tmp_path / "store"
    loaded["colqwen"].embed_directory(image_dir, store=store, batch_size=3, workers=0)
    r = CliRunner().invoke(app, ["store", "compact", "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    (t,) = json.loads(r.stdout)["tables"]
    assert t["after"]["versions"] == 1 and t["after"]["disk_bytes"] <= t["before"]["disk_bytes"]


# ---------------------------------------------------------------- batch size: within float rounding
@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_stored_vectors_depend_on_the_batch_size_only_within_float_rounding(loaded, image_dir, tmp_path):
    stored = {}
    for bs in (1, 4, 8):
        loaded["colqwen"].embed_directory(image_dir, store=tmp_path / f"s{bs}", batch_size=bs, workers=0)
        t = Store(tmp_path / f"s{bs}").only_table()
        rows = t.to_arrow(["path", "page", "embedding"]).to_pylist()
        stored[bs] = {(r["path"], r["page"]): embedding_to_numpy(r["embedding"], "colqwen", 128) for r in rows}
    assert stored[1].keys() == stored[4].keys() == stored[8].keys()
    worst = max(float(np.abs(stored[bs][k] - stored[1][k]).max()) for bs in (4, 8) for k in stored[1])
    assert worst <= BATCH_TOLERANCE, worst


# ---------------------------------------------------------------- counts and remembered failures
@pytest.mark.slow  # embeds folders (or generates the samples twice): several seconds
def test_counts_add_up_and_remembered_failures_are_not_new(loaded, samples, tmp_path):
    folder = shutil.copytree(samples, tmp_path / "f")
    data = (folder / "photos" / "photo_1.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[:4000])  # fails when decoded
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")  # fails when listed
    events: list[tuple[str, dict]] = []
    emb = loaded["colqwen"]
    first = emb.embed_directory(folder, store=tmp_path / "s", workers=0, on_event=lambda k, d: events.append((k, d)))
    found = dict(events)["discovered"]
    assert (found["count"], found["inputs"]) == (7, 9)  # 7 files; 4 photos + 3 pages + 2 bad files
    assert first.inputs == 9 and first.embedded == 7 and len(first.failed) == 2
    assert {p for p, _ in first.new_failures} == {"cut.jpg", "broken.pdf"} and first.remembered == []
    events.clear()
    again = emb.embed_directory(folder, store=tmp_path / "s", workers=0, on_event=lambda k, d: events.append((k, d)))
    todo = dict(events)["todo"]
    assert todo == {"count": 0, "skipped": 7, "inputs": 9, "failed": 0, "remembered": 2}
    assert sorted(again.remembered) == ["broken.pdf", "cut.jpg"] and again.new_failures == []
    assert all(r.endswith("(failed before; the file has not changed since)") for _, r in again.failed)
    assert [d["known"] for k, d in events if k == "failed"] == [True, True]  # each reported once
    assert all(f["remembered"] for f in again.to_dict()["failed"])
    (folder / "cut2.jpg").write_bytes(data[:3000])  # a new bad file: new again
    third = emb.embed_directory(folder, store=tmp_path / "s", workers=0)
    assert [p for p, _ in third.new_failures] == ["cut2.jpg"] and sorted(third.remembered) == ["broken.pdf", "cut.jpg"]


def test_todo_line_adds_up():
    from nomic_memory.cli.embed import todo_line

    line = todo_line({"count": 37, "skipped": 2, "inputs": 41, "failed": 1, "remembered": 1}, 24)
    assert line == (
        "Found 41 images (24 files) to consider: 37 to embed, 2 unchanged (skipped), 1 unreadable, "
        "1 still failing (remembered)"
    )
    assert (
        todo_line({"count": 1, "skipped": 0, "inputs": 1}, 1)
        == "Found 1 image (1 file) to consider: 1 to embed, 0 unchanged (skipped)"
    )
