"""`rlctl data convert`: published dataset annotations -> videorl JSONL. The converters live in
services/data/convert.py (imported when the command runs); this file only parses arguments and reports."""

from __future__ import annotations

from pathlib import Path

import click

# Kept literal so `rlctl --help` imports nothing; tests check it equals services.data.convert.SOURCES.
SOURCES = ("ego-st", "vsi-bench", "sti-bench", "video-r1", "charades-sta")


@click.command("convert")
@click.option("--from", "source", required=True, type=click.Choice(SOURCES), help="the input's published format")
@click.argument("inp", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--video-root", type=click.Path(file_okay=False, path_type=Path),
              help="folder that the dataset's relative video paths are relative to (written as absolute paths); an "
                   "absolute path that does not exist is looked for under it by its tail")
@click.option("--skip-bad", is_flag=True, help="skip and count malformed records instead of stopping at the first")
@click.option("--strict", is_flag=True, help="every warning (an end clipped, a video found nowhere, a column not "
                                             "understood) is an error")
@click.option("--durations", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="charades-sta: video lengths (Charades_v1_*.csv with id,length, or JSON {id: seconds})")
@click.option("--split", type=click.Choice(["train", "eval"]), default=None,
              help="split written on every row [default: eval for a file named *test*, *val*, *eval* or *dev*, "
                   "else train]")
@click.option("--debiased", is_flag=True, help="vsi-bench: leave out the rows the debiased release marks pruned")
def convert(source: str, inp: Path, out: Path, video_root: Path | None, skip_bad: bool, strict: bool,
            durations: Path | None, split: str | None, debiased: bool) -> None:
    """Convert IN, in the --from dataset's published annotation format, to the videorl dataset OUT (JSONL), and
    write what happened to every record beside it (OUT.report.json).

    Sources: ego-st (Ego-ST Bench JSON or ST-R1 JSONL), vsi-bench (parquet/JSON/JSONL rows), sti-bench
    (qa.parquet rows as JSON/JSONL/parquet), video-r1 (Video-R1-260k.json or the CoT release), charades-sta (txt).
    """
    from services.data.convert import ConvertError
    from services.data.convert import convert as run

    try:
        report = run(source, inp, out, video_root=video_root, skip_bad=skip_bad, durations=durations, split=split,
                     strict=strict, debiased=debiased)
    except ConvertError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.summary(), err=True)
    click.echo(f"-> {out} (report: {out}.report.json)")


@click.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(file: Path) -> None:
    """What the videorl dataset FILE (JSONL) holds: the task mix, the answers per task, options per question, video
    paths found and missing, rows with reasoning, and the longest prompt. Bad lines are listed, not fatal."""
    from services.common.dataset import DatasetError
    from services.data.inspect import inspect as run

    try:
        ins = run(file)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    click.echo("\n".join(ins.lines()))
    if not ins.rows:
        raise click.ClickException(f"{file}: no valid rows")
