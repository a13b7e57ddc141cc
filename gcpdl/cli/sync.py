"""`gcpdl sync gs://BUCKET[/PREFIX] [DEST]`: a thin layer over gcpdl.sync.engine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import dry_run_option, json_option, project_option, zone_option
from gcpdl.errors import InvalidInput, SyncError, SyncIncomplete

LINE_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


@click.command("sync")
@click.argument("source", metavar="gs://BUCKET[/PREFIX]")
@click.argument("dest", required=False, type=click.Path(file_okay=True, dir_okay=True, path_type=Path))
@click.option("--on", "on_vm", metavar="NAME", help="Run on this gcpdl VM (the data never passes through here).")
@click.option("--local", is_flag=True, help="Run on this machine instead of on a VM.")
@click.option("--shared", is_flag=True, help="With --on CLUSTER: fill the cluster's shared disk once (read-only on every node).")
@click.option("--jobs", "-j", type=int, default=64, show_default=True, help="Requests in flight.")
@click.option("--delete", is_flag=True, help="Remove files in DEST that are not in the bucket (only inside DEST).")
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching GLOB (repeatable), e.g. '*.jpg'.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB (repeatable).")
@click.option("--billing-project", metavar="PROJECT", help="Project to bill for a requester-pays bucket.")
@click.option("--anonymous", is_flag=True, help="Read a public bucket without credentials.")
@click.option("--slice-size", type=int, default=16 << 20, hidden=True, help="Bytes per ranged slice of a large object.")
@click.option("--retry-base", type=float, default=0.25, hidden=True, help="Seconds; first retry backoff.")
@project_option
@zone_option
@dry_run_option
@json_option
@click.pass_obj
def sync(
    app: App,
    source: str,
    dest: Path | None,
    on_vm: str | None,
    local: bool,
    shared: bool,
    jobs: int,
    delete: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    billing_project: str | None,
    anonymous: bool,
    slice_size: int,
    retry_base: float,
    project: str | None,
    zone: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Copy gs://BUCKET[/PREFIX] to DEST, verified with CRC32C, resumable.

    Re-running fetches only what is missing or changed. PREFIX is treated as a folder:
    gs://b/train copies the objects under train/ into DEST. Exit status 3: the sync ran to its
    end but some objects are not in DEST (named in the warnings; --json says "complete": false).

    \b
    gcpdl sync gs://my-data/imagenet ./imagenet --local
    gcpdl sync gs://my-data/imagenet --on box           (to /data/imagenet on the VM)
    gcpdl sync gs://my-data/imagenet                    (onto the one running gcpdl VM)
    """
    from gcpdl.sync.url import parse_gs_url

    url = parse_gs_url(source)
    if on_vm and local:
        raise InvalidInput("Use either --on NAME or --local, not both.")
    if shared and not on_vm:
        raise InvalidInput("--shared fills a cluster's shared disk: add --on CLUSTER.")
    if jobs < 1 or jobs > 4096:
        raise InvalidInput(f"--jobs must be between 1 and 4096 (got {jobs}).")
    if slice_size < (1 << 20):
        raise InvalidInput("--slice-size must be at least 1 MiB.")
    _check_values(retry_base, billing_project, on_vm)
    if not local:
        _on_vm(app, url, source, dest, on_vm, project, zone, as_json, shared, [
            *(["--jobs", str(jobs)] if jobs != 64 else []),
            *(["--delete"] if delete else []),
            *(["--dry-run"] if dry_run else []),
            *[a for g in include for a in ("--include", g)],
            *[a for g in exclude for a in ("--exclude", g)],
            *(["--billing-project", billing_project] if billing_project else []),
            *(["--anonymous"] if anonymous else []),
            *(["--slice-size", str(slice_size)] if slice_size != 16 << 20 else []),
            *(["--retry-base", str(retry_base)] if retry_base != 0.25 else []),
        ])
        return
    if dest is None:
        dest = Path(url.prefix.rstrip("/").rsplit("/", 1)[-1] or url.bucket)

    from gcpdl.sync.engine import SyncOptions, run_sync

    opts = SyncOptions(
        source=url,
        dest=dest.absolute(),
        jobs=jobs,
        delete=delete,
        dry_run=dry_run,
        include=include,
        exclude=exclude,
        billing_project=billing_project,
        anonymous=anonymous,
        slice_size=slice_size,
        retry_base=retry_base,
    )
    reporter = _Reporter(app)
    try:
        summary = run_sync(opts, app.factory(), on_progress=reporter.update, on_warning=app.warn)
    finally:
        reporter.close()
    data = summary.as_dict()
    app.emit(data, as_json, _human)
    incomplete = summary.incomplete()
    if incomplete is not None:
        raise incomplete  # exit 3: the summary is printed, but DEST is not a full copy


def _on_vm(app: App, url, source: str, dest: Path | None, on_vm: str | None, project, zone, as_json: bool, shared: bool,
           flags: list[str]) -> None:
    """The engine on the VM: ship gcpdl there, run it, relay its progress and summary."""
    import os

    from gcpdl.ssh.session import target_session
    from gcpdl.ssh.target import validate_name
    from gcpdl.sync import remote

    if on_vm:
        name = validate_name(on_vm)
    else:
        name = remote.pick_vm(_running_vms(app, project))
    factory = app.factory(project=project, zone=zone)
    from gcpdl.errors import NotFound

    try:
        session = target_session(factory, name, zone, report=app.say)
    except NotFound:
        from gcpdl.cli.cluster import sync_cluster

        if not on_vm or not sync_cluster(app, factory, name, url, dest, as_json, [source], flags, shared):  # every node of cluster NAME
            raise
        return
    if shared:
        session.close()
        raise InvalidInput(f"{name} is a single VM; --shared is for a cluster's shared disk.")
    app.on_close(session.close)
    target_dest = str(dest) if dest is not None else remote.default_dest(url.prefix, url.bucket)
    app.say(f"Syncing {url} to {name}:{target_dest}")
    result = remote.run_remote(
        session, [source, target_dest, *flags], remote.forwarded_env(), app.say, python=os.environ.get("GCPDL_REMOTE_PYTHON")
    )
    if result.summary is not None:
        result.summary["vm"] = name
        app.emit(result.summary, as_json, _human)
    if result.exit_code != 0:
        err = SyncError(f"On VM {name}: {result.error}")
        err.exit_code = result.exit_code if result.exit_code in (1, 2, SyncIncomplete.exit_code) else 1
        raise err


def _running_vms(app: App, project: str | None) -> list[str]:
    from gcpdl.compute import lifecycle
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline

    factory = app.factory(project=project)
    compute = Compute(factory, factory.project())
    return [i.name for i in lifecycle.list_managed(compute, Deadline(60, what="the VM list")) if i.status == "RUNNING"]


def _human(d: dict) -> str:
    verb = "Would fetch" if d["dry_run"] else "Fetched"
    extra = []
    for key, label in (("unsafe", "unsafe names skipped"), ("collisions", "collisions skipped"), ("gone", "changed during sync"), ("deleted", "deleted" if not d["dry_run"] else "would be deleted"), ("failed", "failed")):
        if d.get(key):
            extra.append(f"{d[key]} {label}")
    tail = f"; {', '.join(extra)}" if extra else ""
    lines = [
        f"{verb} {d['files']} files ({_mb(d['bytes'])}) to {d['dest']} in {d['seconds']:.1f}s"
        f" ({d['files_per_s']:.0f} files/s, {d['mb_per_s']:.1f} MB/s); {d['skipped']} already up to date{tail}."
    ]
    for rel in d.get("would_delete") or []:
        lines.append(f"would delete {rel}")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


class _Reporter:
    """A rich progress bar on a terminal, otherwise a line every few seconds (all on stderr)."""

    def __init__(self, app: App):
        self.app = app
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.task = None
        self.last_line = time.monotonic()

    def update(self, p) -> None:
        if self.tty:
            self._bar(p)
            return
        now = time.monotonic()
        if now - self.last_line >= LINE_EVERY:
            self.last_line = now
            eta = f", ETA {p.eta:.0f}s" if p.eta is not None else ""
            total = f"{p.files_total}" + ("" if p.listing_done else "+")
            self.app.say(
                f"{p.files_done}/{total} files, {_mb(p.bytes_done)}/{_mb(p.bytes_total)},"
                f" {p.files_per_s:.0f} files/s, {p.mb_per_s:.1f} MB/s{eta} ({p.skipped} up to date)"
            )

    def _bar(self, p) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        if self.bar is None:
            from rich.console import Console

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[files]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("sync", total=None, files="")
        files = f"{p.files_done}/{p.files_total}{'' if p.listing_done else '+'} files, {p.files_per_s:.0f}/s"
        self.bar.update(self.task, completed=p.bytes_done, total=p.bytes_total if p.listing_done else None, files=files)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _check_values(retry_base: float, billing_project: str | None, on_vm: str | None) -> None:
    """The values that reach a request or the VM's command line, checked before any (issue 9)."""
    import math

    from gcpdl.settings import escaped, parse_project
    from gcpdl.spec import validate_name

    if not (math.isfinite(retry_base) and 0 < retry_base <= 60):
        raise InvalidInput(f"--retry-base must be more than 0 and at most 60 seconds (got {retry_base:g}).")
    if billing_project is not None:
        try:
            parse_project(billing_project)
        except ValueError as e:
            raise InvalidInput(f"Invalid --billing-project '{escaped(billing_project)}': {e}.") from None
    if on_vm is not None:
        validate_name(on_vm)
