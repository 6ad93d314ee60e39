"""``synthshot datasets list|prepare|verify``. Imports only typer at module level: the verbs load
the rest when they run, so ``synthshot --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

datasets_app = typer.Typer(
    help="Benchmark datasets: list them, prepare one (download, verify, extract, standard split), verify it.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Dataset name (see `synthshot datasets list`).")]
RootOpt = Annotated[Path, typer.Option("--root", help="Folder that holds the datasets (one sub-folder each).")]
ProtocolOpt = Annotated[
    str | None, typer.Option("--protocol", help="coop (the few-shot papers' splits) or official; default: coop (CUB: official).")
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="Folder of <name>.json entries that replace the built-in ones (lab mirrors, tests)."),
]


@datasets_app.command("list")
def list_datasets(registry: RegistryOpt = None) -> None:
    """Names, protocols, automatic or manual, download size and terms of use."""
    from synthshot.datasets.registry import dataset_names, load_source

    sources = [load_source(n, registry) for n in dataset_names()]
    header = ("name", "protocols", "mode", "size", "checksums", "redistribution", "terms")
    rows = []
    for s in sources:
        pinned = sum(1 for f in s.files if f.sha256)
        rows.append((
            s.name,
            ",".join(p if p != s.default_protocol else f"{p}*" for p in s.protocols),
            s.mode,
            s.size_text(),
            f"{pinned}/{len(s.files)} sha256",
            s.terms.redistribution.split(",")[0],
            s.terms.url,
        ))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    typer.echo("* default protocol. Files without a pinned sha256 are checked by md5 or by the split's counts and "
               "names; `prepare` prints the sha256 it got and holds later downloads to it (ROOT/.cache/<name>/"
               ".synthshot-downloads.json).")


@datasets_app.command("prepare")
def prepare(
    name: NameArg,
    root: RootOpt,
    protocol: ProtocolOpt = None,
    from_archive: Annotated[
        list[Path] | None,
        typer.Option("--from-archive", help="Your copy of a file (archive, plain file, or an extracted folder); repeatable."),
    ] = None,
    mirror: Annotated[
        list[str] | None,
        typer.Option("--mirror", help="Base URL tried first as <URL>/<name>/<file>, held to the same checksums "
                     "(also $SYNTHSHOT_DATASETS_MIRROR); repeatable."),
    ] = None,
    imagefolder: Annotated[
        str, typer.Option("--imagefolder", help="none, symlink, hardlink or copy: imagefolder/<protocol>/<split>/<NNN>_<class>/.")
    ] = "none",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; fetch and write nothing.")] = False,
    registry: RegistryOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds without data before a download attempt fails.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Resumed attempts per URL after a dropped connection.")] = 3,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
    offline: Annotated[
        bool, typer.Option("--offline", help="Download nothing (also $HF_HUB_OFFLINE): use ROOT/.cache and --from-archive.")
    ] = False,
    max_extract_gb: Annotated[
        float | None,
        typer.Option("--max-extract-gb", help="GB one archive may write when extracted (also $SYNTHSHOT_MAX_EXTRACT_BYTES); "
                     "default: max(1 GB, 10 x the archive's size)."),
    ] = None,
) -> None:
    """Download (or take --from-archive), verify, extract and lay out NAME under ROOT, with its standard split."""
    from synthshot.datasets.download import HttpOptions
    from synthshot.datasets.prepare import prepare_dataset
    from synthshot.errors import ConfigError

    if max_extract_gb is not None and not 0 < max_extract_gb < float("inf"):
        raise ConfigError(f"--max-extract-gb {max_extract_gb} is not a positive number of GB: pass e.g. --max-extract-gb 400")
    prepare_dataset(
        name,
        root,
        protocol=protocol,
        from_archives=list(from_archive or []),
        mirrors=list(mirror or []),
        imagefolder=imagefolder,
        dry_run=dry_run,
        registry_dir=registry,
        http=HttpOptions(timeout=timeout, retries=retries, progress=progress, offline=True if offline else None),
        max_extract_bytes=None if max_extract_gb is None else int(max_extract_gb * 1e9),
        echo=typer.echo,
    )


@datasets_app.command("verify")
def verify(
    name: NameArg,
    root: RootOpt,
    protocol: ProtocolOpt = None,
    archives: Annotated[
        bool, typer.Option("--archives/--no-archives", help="Also re-hash the downloads kept in ROOT/.cache.")
    ] = True,
    decode: Annotated[bool, typer.Option("--decode", help="Also decode every image (slow).")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Check a prepared dataset offline: split paths on disk, labels, names, counts and hashes."""
    from synthshot.datasets.verify import verify_dataset

    report = verify_dataset(name, root, protocol, archives=archives, decode=decode, registry_dir=registry, echo=typer.echo)
    for note in report.notes:
        typer.echo(f"note: {note}")
    if report.problems:
        for problem in report.problems:
            typer.echo(f"problem: {problem}", err=True)
        from synthshot.errors import DataError

        raise DataError(f"{report.dataset}: {len(report.problems)} problem(s) in {report.folder} (listed above)")
    for proto, counts in report.counts.items():
        typer.echo(f"{report.dataset} ({proto}): ok, {counts['train']} train / {counts['val']} val / "
                   f"{counts['test']} test images in {report.folder}")
