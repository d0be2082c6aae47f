"""How ``nomic-memory search`` prints its hits for a person.

* On a terminal: one table per query (rank, score, page, file), the file's full path wrapped at
  path separators (``/``, then ``_ - .`` and spaces) to the terminal's width, never inside a name's
  word unless a single word is wider than the column.
* Piped or redirected: plain lines, the full path last and never wrapped, for ``grep``/``cut``:
  ``rank  score  page  file``.

A query with no hits says why in a sentence (the ``--where`` filter matched no rows, or the table
is empty) instead of an empty table.
"""

from __future__ import annotations

import os
import re

import typer

# Break after a separator: the path's "/" first, then the separators inside names.
_BREAKS = (re.compile(r"(?<=/)"), re.compile(r"(?<=[_\-. ])"))
# The table's columns besides the file, and rich's borders: "│ 10 │ 25.2380 │ page │ " ... " │"
_RANK_W, _SCORE_W, _PAGE_W = 4, 9, 4


def wrap_path(path: str, width: int) -> str:
    """``path`` with newlines inserted so no line is wider than ``width``, breaking after ``/``
    where it can, else after ``_ - .`` or a space, else (a single word wider than ``width``)
    inside the word."""
    width = max(8, width)
    lines: list[str] = []
    rest = path
    while len(rest) > width:
        cut = 0
        for pat in _BREAKS:
            cuts = [m.start() for m in pat.finditer(rest, 1, width + 1) if 0 < m.start() <= width]
            if cuts:
                cut = cuts[-1]
                break
        cut = cut or width
        lines.append(rest[:cut])
        rest = rest[cut:]
    lines.append(rest)
    return "\n".join(lines)


def _label(q) -> str:
    return f"query: {q}" if isinstance(q, str) else f"image: {os.fspath(q)}"


def no_results_sentence(where: str | None) -> str:
    if where:
        return f"No results: the filter matched no rows (--where {where})"
    return "No results: the table holds no rows"


def print_results(meta: dict, queries: list, results: list, *, approx: bool, where, timing: dict, console=None) -> None:
    """Print each query's hits (dicts, as :meth:`~nomic_memory.search.Hit.to_dict` or a server gives
    them) and one summary line; ``meta`` names the ``table`` and its ``kind`` (and the ``server``
    that answered, if one did)."""
    from rich.console import Console  # late: rich's import (0.1 s) only when results are printed

    console = console or Console(highlight=False)
    for q, hits in zip(queries, results):
        if not hits:
            typer.echo(f"{_label(q)}\n{no_results_sentence(where)}")
        elif console.is_terminal:
            _table(console, q, hits)
        else:
            _plain(q, hits)
    n = len(queries)
    mode = "approximate" if approx else "indexed" if meta.get("via") == "index" else "exact"
    head = f"{mode} search of {meta['table']} ({meta['kind']})" + (f" where {where}" if where else "")
    if meta.get("server"):
        tail = f": answered by the server at {meta['server']} in {timing['server_seconds']:.3f} s"
    else:
        tail = (
            f": model loaded in {timing['load_seconds']:.2f} s, embedded {n} quer{'y' if n == 1 else 'ies'} "
            f"in {timing['embed_seconds']:.3f} s, searched in {timing['search_seconds']:.3f} s"
        )
    summary = head + tail
    if console.is_terminal:
        console.print(summary, style="dim", markup=False)
    else:
        typer.echo(summary)


def _table(console, q, hits) -> None:
    from rich.table import Table

    rank_w = max(_RANK_W, len(str(hits[-1]["rank"])))
    file_w = console.width - (rank_w + _SCORE_W + _PAGE_W) - 13  # 4 columns: 5 rules and 8 pads
    t = Table(title=_label(q), title_justify="left")
    t.add_column("rank", justify="right", no_wrap=True)
    t.add_column("score", justify="right", no_wrap=True)
    t.add_column("page", justify="right", no_wrap=True)
    t.add_column("file", overflow="fold")
    for h in hits:
        t.add_row(str(h["rank"]), f"{h['score']:.4f}", str(h["page"]), wrap_path(h["file"], file_w))
    console.print(t, markup=False)


def _plain(q, hits) -> None:
    lines = [_label(q), f"{'rank':>4}  {'score':>9}  {'page':>4}  file"]
    lines += [f"{h['rank']:>4}  {h['score']:>9.4f}  {h['page']:>4}  {h['file']}" for h in hits]
    typer.echo("\n".join(lines))


__all__ = ["no_results_sentence", "print_results", "wrap_path"]
