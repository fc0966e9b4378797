"""`sama-agent bench`: run a benchmark suite, resumably and in shards, and merge the results."""
from __future__ import annotations

import importlib
from pathlib import Path

import click

from sama_agent.errors import SamaError

from .data import SUITES, BenchData, BenchError


def _load_judge(spec: str | None):
    """`package.module:factory` -> ClairJudge(factory()), where factory returns a LangChain chat model."""
    if not spec:
        return None
    from .judge import ClairJudge

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BenchError(f"--judge '{spec}' must look like package.module:factory (a callable returning a LangChain chat model)")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise BenchError(f"--judge '{spec}' could not be loaded: {exc}") from None
    return ClairJudge(factory() if callable(factory) else factory)


@click.command("bench")
@click.option("--suite", type=click.Choice(SUITES + ("world",)), required=True,
              help="Benchmark to run; 'world' scores issue 5's bars on a world generator split (needs --split).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data folder: records.json, masks.json and the frame folders the records name.")
@click.option("--split", default=None,
              help="Read NAME.json and NAME_masks.json instead of records.json and masks.json (the world generator's layout).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="SAMA checkpoint folder (config.json + safetensors) [default: the bundled checkpoint, or $SAMA_AGENT_MODEL].")
@click.option("--segmenter", default=None, help="Registered segmenter to use instead of the model's own (see `sama-agent plugins`).")
@click.option("--answerer", type=click.Choice(["model", "oracle"]), default="model", show_default=True,
              help="'oracle' replays the ground truth: a check of the data set and the metrics (it must score 1).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: bench-results/<suite>].")
@click.option("--shard", default="0/1", show_default=True, help="Run only shard i of n (i counts from 0); merge afterwards with --merge.")
@click.option("--merge", "merge_only", is_flag=True, help="Only merge the per-video results in --out into summary.json / summary.md.")
@click.option("--similarity", type=click.Choice(["auto", "minilm", "lexical"]), default="auto", show_default=True,
              help="Phrase similarity for Bench-G recall; 'lexical' is a non-semantic fallback.")
@click.option("--miou-normalizer", type=click.Choice(["max", "gt", "matched"]), default="max", show_default=True,
              help="Turn mIoU denominator: max(#pred, #gt), #gt, or matched pairs only (SAMA-script convention).")
@click.option("--judge", default=None, help="CLAIR judge: package.module:factory returning a LangChain chat model.")
@click.option("--seg-hint", default=None,
              help="Text appended to Bench-G questions whose answer is grounded, e.g. 'Please respond with segmentation masks.'")
@click.option("--limit", type=int, default=None, help="world: score only the first N records of the split.")
@click.option("--region-frame", type=click.Choice(["largest", "first"]), default="largest", show_default=True,
              help="world: the frame a <mask> region is shown on (where the object is largest, or where it first shows).")
def bench(suite, data_dir, split, model_dir, segmenter, answerer, out_dir, shard, merge_only, similarity, miou_normalizer, judge, seg_hint,
          limit, region_frame):
    """Score a model on SAMA-Bench-G, SAMA-Bench-C, a Ref-VOS set, or a world split; one JSON per video plus a summary table."""
    from .bench import BenchConfig, BenchRunner, merge, parse_shard

    if suite == "world":
        return _world(data_dir, split, model_dir, segmenter, answerer, out_dir, limit, region_frame)
    if limit is not None:
        raise click.UsageError("--limit is for --suite world only")
    out_dir = out_dir or Path("bench-results") / suite
    try:
        files = {"records_file": f"{split}.json", "masks_file": f"{split}_masks.json"} if split else {}
        data = BenchData(data_dir, suite, **files)
        if merge_only:
            summary = merge(out_dir, data)
            click.echo((out_dir / "summary.md").read_text())
            return summary
        shard_index, shard_count = parse_shard(shard)
        runner = BenchRunner(
            data,
            _build_answerer(answerer, data, model_dir, segmenter),
            out_dir,
            config=BenchConfig(suite, miou_normalizer=miou_normalizer, seg_hint=seg_hint),
            similarity=_similarity(suite, similarity),
            judge=_load_judge(judge),
        )

        def progress(unit, result):
            state = "ok" if result["status"] == "done" else f"FAILED: {result['error']}"
            click.echo(f"{unit.key}: {state} ({result['elapsed_s']:.1f}s)", err=True)

        report = runner.run((shard_index, shard_count), progress=progress)
        click.echo(f"{len(report.done)} videos scored, {len(report.skipped)} already done, {len(report.failed)} failed", err=True)
        if shard_count == 1:
            merge(out_dir, data)
            click.echo((out_dir / "summary.md").read_text())
        else:
            click.echo(f"shard {shard_index}/{shard_count} finished; when all shards are done run the same command with --merge", err=True)
        if report.failed:
            raise click.ClickException(f"{len(report.failed)} videos failed; see {out_dir}/videos/*.json. Re-running retries them.")
    except SamaError as exc:
        raise click.ClickException(str(exc)) from None


def _build_answerer(kind: str, data: BenchData, model_dir, segmenter):
    from .answerers import GroundTruthReplayAnswerer, load_model_answerer

    if kind == "oracle":
        return GroundTruthReplayAnswerer(data)
    return load_model_answerer(model_dir, segmenter)  # no --model: the default checkpoint, as in chat


def _similarity(suite: str, kind: str):
    if suite != "sama-bench-g":
        return None
    from .similarity import default_similarity

    return default_similarity(kind)


def _world(data_dir, split, model_dir, segmenter, answerer, out_dir, limit, region_frame):
    """Issue 5's three held-out bars on a world split, in one command."""
    from .world import WorldConfig, load_world, run_world, summary_table

    if not split:
        raise click.UsageError("--suite world needs --split (e.g. heldout): the world writes <split>.json and <split>_masks.json")
    out_dir = out_dir or Path("bench-results") / f"world-{split}"
    try:
        data = load_world(data_dir, split)
        config = WorldConfig(limit=limit, region_frame=region_frame)
        chosen = _build_answerer(answerer, data, model_dir, segmenter)

        def progress(result):
            right = sum(i.get("correct", False) for i in result["items"])
            scored = sum("correct" in i for i in result["items"])
            click.echo(f"record {result['index']} ({result['video']}): {right}/{scored} answers right ({result['elapsed_s']:.1f}s)", err=True)

        summary = run_world(data, chosen, out_dir, config, progress)
        click.echo(summary_table(summary, f"world {split} - {chosen.name}"))
        click.echo(f"per-record results and summary: {out_dir}/summary.json", err=True)
        return summary
    except SamaError as exc:
        raise click.ClickException(str(exc)) from None
