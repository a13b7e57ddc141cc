"""`gcpdl sync gs://BUCKET[/PREFIX] [DEST]`: a thin layer over gcpdl.sync.engine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import complete_vm_names, dry_run_option, json_option, project_option, zone_option
from gcpdl.errors import GcpdlError, InvalidInput, SyncError, SyncIncomplete

LINE_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


@click.command("sync")
@click.argument("source", metavar="gs://BUCKET[/PREFIX]")
@click.argument("dest", required=False, type=click.Path(file_okay=True, dir_okay=True, path_type=Path))
@click.option("--on", "on_vm", metavar="NAME", shell_complete=complete_vm_names, help="Run on this gcpdl VM (the data never passes through here).")
@click.option("--local", is_flag=True, help="Run on this machine instead of on a VM.")
@click.option("--shared", is_flag=True, help="With --on CLUSTER: fill the cluster's shared disk once (read-only on every node).")
@click.option("--jobs", "-j", type=int, default=64, help="Requests in flight (default: 64).")
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
    gcpdl sync gs://my-data/imagenet --on box    (to /data/imagenet on the VM)
    gcpdl sync gs://my-data/imagenet             (onto the one running gcpdl VM)
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
    from gcpdl.sync.state import SyncBusy, publish_result

    reporter = _Reporter(app, None if dry_run else opts)
    try:
        summary = run_sync(opts, app.factory(), on_progress=reporter.update, on_warning=app.warn)
    except SyncBusy as busy:
        reporter.close()
        if busy.holder is None:  # a lock file that does not say who holds it: nothing to follow
            raise
        _follow(app, busy, as_json)
        return
    except KeyboardInterrupt:
        reporter.close()
        publish_result(reporter.state_dir(), 130, None, "It was interrupted (Ctrl-C); finished files are kept.")
        app.say("Interrupted. Finished files are kept; re-run the same command to resume.")
        raise click.exceptions.Exit(130)
    except GcpdlError as e:
        publish_result(reporter.state_dir(), e.exit_code, None, e.message)
        raise
    finally:
        reporter.close()
    data = summary.as_dict()
    incomplete = summary.incomplete()
    publish_result(reporter.state_dir(), incomplete.exit_code if incomplete else 0, data, incomplete.message if incomplete else None)
    app.emit(data, as_json, _human)
    if incomplete is not None:
        raise incomplete  # exit 3: the summary is printed, but DEST is not a full copy


FOLLOW_LIMIT = 7 * 24 * 3600.0  # seconds a second sync follows the first one at most


def _follow(app: App, busy, as_json: bool) -> None:
    """Another sync holds DEST: relay its progress until it ends and report how it ended, with its
    exit status (never a second writer)."""
    from gcpdl.deadline import Deadline
    from gcpdl.sync.progress import ATTACHED_PREFIX, RECORD_EVERY
    from gcpdl.sync.state import follow

    holder = busy.holder
    app.say(f"{busy.message[:-1]}: following its progress until it ends (Ctrl-C stops following, not the sync).")
    reporter = _Reporter(app)
    if reporter.records:  # tell the machine that started us that Ctrl-C must not stop the holder
        click.echo(f"{ATTACHED_PREFIX}{holder.pid}", err=True)
    try:
        result = follow(busy, reporter.update, Deadline(FOLLOW_LIMIT, what=f"the sync ({holder.describe()})"), RECORD_EVERY)
    except KeyboardInterrupt:
        reporter.close()
        app.say(f"Stopped following. The sync ({holder.describe()}) goes on; stop it with: kill -INT {holder.pid}")
        raise click.exceptions.Exit(130)
    finally:
        reporter.close()
    if result is None:
        raise SyncError(f"The sync ({holder.describe()}) ended without a summary (it was stopped or killed).",
                        fix="Re-run the same command to resume: finished files are kept.")
    if result.get("summary") is not None:
        app.emit(result["summary"], as_json, _human)
    code = int(result.get("exit") or 0)
    if code:
        fix = None if code == SyncIncomplete.exit_code else "Re-run the same command to resume: finished files are kept."
        err = SyncError(f"The sync ({holder.describe()}) did not finish: {result.get('error') or f'exit {code}'}", fix=fix)
        err.exit_code = code if code in (1, 2, SyncIncomplete.exit_code, 130) else 1
        raise err


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
    from gcpdl.disks import expect_for_vm

    expect = expect_for_vm(factory, name, zone, target_dest)  # the disk and network that bound it
    if expect is not None:
        app.say(expect.before)
    reporter = _Reporter(app)
    try:
        result = remote.run_remote(
            session, [source, target_dest, *flags], remote.forwarded_env(), app.say, python=os.environ.get("GCPDL_REMOTE_PYTHON"),
            on_progress=reporter.update,
        )
    except remote.RemoteInterrupted as e:
        reporter.close()
        if e.following is not None:
            app.say(f"Stopped following. The sync on {name} (pid {e.following}) goes on: re-run the same command to follow it "
                    f"again, or stop it with: gcpdl ssh {name} -- kill -INT {e.following}")
        elif e.stopped:
            app.say(f"Interrupted. Stopped the sync on {name}; finished files are kept. Re-run the same command to resume.")
        else:
            stop = f"gcpdl ssh {name} -- kill -INT {e.pid}" if e.pid else f"gcpdl ssh {name} -- pkill -INT -f 'gcpdl sync'"
            app.say(f"Interrupted here, but the sync may still be running on {name}. Stop it with: {stop}")
            app.say("Re-run the same command to resume once it has stopped.")
        raise click.exceptions.Exit(130)
    finally:
        reporter.close()
    after = None
    if result.summary is not None:
        result.summary["vm"] = name
        if expect is not None:
            s = result.summary
            after = expect.after(int(s.get("bytes") or 0), float(s.get("seconds") or 0), bool(s.get("dry_run")))
            s["expected"] = expect.as_dict(after)
        app.emit(result.summary, as_json, _human)
    if after:
        app.say(after)
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

    def __init__(self, app: App, publish=None):
        self.app = app
        self.publish = publish  # SyncOptions: its (resolved) DEST holds the lock once progress flows
        self.last_published = 0.0
        import os

        from gcpdl.sync.progress import RECORD_ENV

        self.records = bool(os.environ.get(RECORD_ENV))
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.task = None
        self.last_line = time.monotonic()

    def state_dir(self):
        """DEST/.gcpdl of the sync this reporter draws (None for a dry run)."""
        from gcpdl.sync.state import state_dir

        return state_dir(self.publish.dest) if self.publish is not None else None

    def update(self, p) -> None:
        from gcpdl.sync.progress import RECORD_EVERY, eta_text, to_record

        if self.publish is not None:  # for a second sync of the same DEST to follow
            now = time.monotonic()
            if now - self.last_published >= RECORD_EVERY or (p.listing_done and p.bytes_done >= p.bytes_total):
                from gcpdl.sync.state import publish_progress

                self.last_published = now
                publish_progress(self.state_dir(), p)
        if self.records:  # the engine on a VM: records for the machine that started it
            now = time.monotonic()
            if now - self.last_line >= RECORD_EVERY or (p.listing_done and p.bytes_done >= p.bytes_total):
                self.last_line = now
                click.echo(to_record(p), err=True)
            return
        if self.tty:
            self._bar(p)
            return
        now = time.monotonic()
        if now - self.last_line >= LINE_EVERY:
            self.last_line = now
            eta = f", {eta_text(p.eta)}" if p.eta is not None else ""
            total = f"{p.files_total}" + ("" if p.listing_done else "+")
            self.app.say(
                f"{p.files_done}/{total} files, {_mb(p.bytes_done)}/{_mb(p.bytes_total)},"
                f" {p.files_per_s:.0f} files/s, {p.mb_per_s:.1f} MB/s{eta} ({p.skipped} up to date)"
            )

    def _bar(self, p) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

        from gcpdl.sync.progress import eta_text

        if self.bar is None:
            from rich.console import Console

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[files]}"),
                TextColumn("{task.fields[eta]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("sync", total=None, files="", rate="", eta="")
        # rate and ETA from the engine's own counters: right for a relayed bar too
        files = f"{p.files_done}/{p.files_total}{'' if p.listing_done else '+'} files"
        self.bar.update(self.task, completed=p.bytes_done, total=p.bytes_total if p.listing_done else None, files=files,
                        rate=f"{p.mb_per_s:.1f} MB/s", eta=eta_text(p.eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _check_values(retry_base: float, billing_project: str | None, on_vm: str | None) -> None:
    """The values that reach a request or the VM's command line, checked before any (issue 9)."""
    import math

    from gcpdl.spec import validate_name, validate_project_flag

    if not (math.isfinite(retry_base) and 0 < retry_base <= 60):
        raise InvalidInput(f"--retry-base must be more than 0 and at most 60 seconds (got {retry_base:g}).")
    if billing_project is not None:
        validate_project_flag(billing_project, "--billing-project")
    if on_vm is not None:
        validate_name(on_vm)
