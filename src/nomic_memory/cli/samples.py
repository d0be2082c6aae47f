"""``nomic-memory samples DIR``: a small folder to try the tool on (photos and a PDF)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nomic_memory.cli.common import fail, json_option, plural, say, setup_logging


def samples(
    directory: Path = typer.Argument(
        ..., metavar="DIR", help="Directory to write the sample files to (made if missing)."
    ),
    json_out: bool = json_option(),
) -> None:
    """Write a few sample photos and a 3-page PDF to DIR, to try embed, search and serve on.
    The files are the same on every machine; existing files are never overwritten."""
    setup_logging(False)
    from nomic_memory.ingest.samples import TRY_OUT_PDF, SampleConflict, write_try_out_folder  # late: numpy, PIL

    if directory.exists() and not directory.is_dir():
        raise fail(f"not a directory: {directory}")
    try:
        written, there = write_try_out_folder(directory)
    except SampleConflict as e:
        raise fail(str(e))
    except OSError as e:
        raise fail(f"cannot write to {directory}: {e.strerror or e}")
    files = sorted(str(p.relative_to(directory.expanduser())) for p in written + there)
    if json_out:
        typer.echo(
            json.dumps(
                {"directory": str(directory), "files": files, "written": len(written), "already_there": len(there)}
            )
        )
        return
    photos = [f for f in files if f != TRY_OUT_PDF]
    what = f"{plural(len(photos), 'photo')} and {TRY_OUT_PDF} (3 pages)"
    if written:
        say(
            f"Wrote {plural(len(written), 'sample file')} to {directory}: {what}"
            + (f" ({len(there)} already there)" if there else "")
        )
    else:
        say(f"The {len(files)} sample files are already in {directory}: {what}")
