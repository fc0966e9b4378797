"""The `sama-agent` command line. Core commands live here; `chat`, `train`,
`bench` and any third-party command arrive through `register_commands`."""
from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import SamaError
from .plugins import get_registry


@click.group()
@click.version_option(__version__, prog_name="sama-agent")
def cli():
    """Referentially grounded video chat: ask about regions in a video, get answers whose phrases carry masks."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plugins(as_json):
    """List every registered component: kind, name, version, distribution."""
    registry = get_registry()
    rows = [
        {"kind": c.kind, "name": c.name, "version": c.version, "distribution": c.distribution, "plugin": c.plugin}
        for c in registry.all()
    ]
    failures = [{"distribution": f.distribution, "plugin": f.plugin, "error": f.error} for f in registry.failures]
    if as_json:
        click.echo(json.dumps({"components": rows, "failures": failures}, indent=2))
        return
    widths = {k: max([len(k)] + [len(r[k]) for r in rows]) for k in ("kind", "name", "version", "distribution")}
    header = "  ".join(k.upper().ljust(widths[k]) for k in widths)
    click.echo(header)
    for row in rows:
        click.echo("  ".join(row[k].ljust(widths[k]) for k in widths))
    for failure in registry.failures:
        click.echo(f"skipped: {failure}", err=True)


@cli.command()
@click.argument("video", type=click.Path())
@click.option("--fps", type=float, default=None, help="Frame rate for a frame folder (files carry their own).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(video, fps, as_json):
    """Frames, frame rate, size and duration of a video file or frame folder."""
    from .video import Video

    clip = Video(video, fps=fps)
    data = {
        "path": str(clip.path),
        "frames": clip.num_frames,
        "fps": round(clip.fps, 3),
        "width": clip.width,
        "height": clip.height,
        "duration_s": round(clip.duration, 3),
    }
    if as_json:
        click.echo(json.dumps(data))
    else:
        for key, value in data.items():
            click.echo(f"{key:11s} {value}")


def build_cli() -> click.Group:
    """The CLI with every registered command added."""
    registry = get_registry()
    for component in registry.components["command"].values():
        if component.name not in cli.commands:
            cli.add_command(component.obj)
    return cli


def main(argv=None):
    registry = get_registry()
    for failure in registry.failures:
        click.echo(f"warning: {failure}", err=True)
    try:
        build_cli().main(args=argv, prog_name="sama-agent", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SamaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
