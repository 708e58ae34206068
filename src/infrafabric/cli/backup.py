"""``ifab backup`` and ``ifab restore``: the data directory in one archive and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infrafabric.backup import backup as make_backup
from infrafabric.backup import restore as unpack_backup
from infrafabric.cli.common import reported_errors
from infrafabric.server.runner import ENV_DATA, default_data_dir

Data = Annotated[
    Path | None,
    typer.Option("--data", help=f"Data directory (default: ${ENV_DATA} or your data dir)."),
]


def backup(
    archive: Annotated[
        Path, typer.Argument(help="The archive to write (.tar.gz; must not exist).")
    ],
    data: Data = None,
) -> None:
    """Copy the data directory (board, witness, keys, keyrings, tokens) into one archive,
    while the server runs. The archive holds the fabric's secrets: it is written 0600."""
    directory = data or default_data_dir()
    with reported_errors():
        manifest = make_backup(directory, archive)
    size = manifest["witness_size"]
    typer.echo(
        f"backed up {directory} to {archive}: {len(manifest['files'])} files"
        + ("" if size is None else f", witness log of {size} entries")
    )


def restore(
    archive: Annotated[Path, typer.Argument(help="An archive made by `ifab backup`.")],
    data: Data = None,
) -> None:
    """Unpack an archive into a new (absent or empty) data directory, after checking every
    file against its manifest and both databases with SQLite's integrity check."""
    directory = data or default_data_dir()
    with reported_errors():
        manifest = unpack_backup(archive, directory)
    typer.echo(
        f"restored {len(manifest['files'])} files into {directory}; "
        f"check the witness with: ifab witness verify --data {directory}"
    )
