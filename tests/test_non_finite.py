"""Numbers that are not numbers: .nan, .inf and -.inf (in every spelling YAML 1.1 reads, and a literal too large
for a float) are refused in every settings file labcycle reads, with the file, line, key and what to write.

`learning_rate: .nan` used to pass the config check and fail 30 s later with two tracebacks, and `.inf` gave
an adapter of NaN weights and exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from labcycle.flows import config
from tests.mistakes import assert_mistake
from tests.test_hostile_inputs import assert_clean_failure, labcycle

SPELLINGS = [(".nan", "NaN (not a number)"), (".NaN", "NaN (not a number)"), (".NAN", "NaN (not a number)"),
             (".inf", "infinity"), (".Inf", "infinity"), ("+.INF", "infinity"), ("-.inf", "minus infinity"),
             ("1.0e+400", "infinity")]


@pytest.mark.parametrize(("value", "shown"), SPELLINGS)
def test_every_spelling_is_refused_in_the_config(tmp_path, value, shown):
    assert_mistake(config.load, tmp_path / "labcycle.yaml", f"tuning:\n  knowledge:\n    learning_rate: {value}\n",
                   ":3:5", f"tuning.knowledge.learning_rate: {shown} is not a finite number; write a finite number "
                   "greater than 0 (e.g. 0.0002) instead, or leave the key out for its default")


def test_a_whole_number_a_bounded_one_and_text(tmp_path):
    f = tmp_path / "labcycle.yaml"
    assert_mistake(config.load, f, "generation:\n  samples_per_seed: .inf\n", ":2:3", "write a whole number at least 1 (e.g. 30)")
    assert_mistake(config.load, f, "tuning:\n  lora:\n    dropout: .nan\n", ":3:5",
                   "write a finite number at least 0 and less than 1 (e.g. 0.1)")
    assert_mistake(config.load, f, "generation:\n  teacher:\n    model: .nan\n", ":3:5",
                   "generation.teacher.model: this value reads as NaN (not a number), not as text; put it in quotes")


def _recipe(path: Path):  # type: ignore[no-untyped-def]
    from labcycle.tasks.mix.recipe import load_recipe

    return load_recipe(path)


def _policy(path: Path):  # type: ignore[no-untyped-def]
    from labcycle.tasks.gate import load_policy

    return load_policy(path)


def _pipeline(path: Path):  # type: ignore[no-untyped-def]
    from labcycle.tasks.generate.spec import load_spec

    return load_spec(path)


def _webhook(path: Path):  # type: ignore[no-untyped-def]
    from labcycle.webhook.settings import load_settings

    return load_settings(path, environ={}, resolve_secret=False)


def _pools(path: Path):  # type: ignore[no-untyped-def]
    from labcycle.deploy.pools import load_pools

    return load_pools(path)


def _shipped_pipeline() -> str:
    from labcycle.tasks.generate.spec import shipped_spec_path

    return shipped_spec_path("freeform_skill").read_text().replace("threshold: 0.8", "threshold: .NaN", 1)


@pytest.mark.parametrize(
    ("load", "name", "text", "where", "words"),
    [
        (_recipe, "recipe.yaml", "skills:\n  replay_fraction: .inf\n", ":2:3",
         "skills.replay_fraction: infinity is not a finite number; write a finite number at least 0 and at most 1 (e.g. 0.1)"),
        (_policy, "gate.yaml", "max_cycles: -.inf\n", ":1:1", "max_cycles: minus infinity is not a finite number"),
        (_webhook, "webhook.yaml", "keep_days: .nan\n", ":1:1", "keep_days: NaN (not a number) is not a finite number"),
        (_pools, "prefect.yaml", "definitions:\n  work_pools:\n    gpu:\n      name: .inf\n      type: process\n", ":4:7",
         "gpu.name: this value reads as infinity, not as text; put it in quotes"),
        (_pipeline, "pipeline.yaml", None, None, "threshold: NaN (not a number) is not a finite number"),
    ],
    ids=["recipe", "gate-policy", "webhook", "prefect-yaml", "pipeline"],
)
def test_every_settings_file_refuses_them(tmp_path, load, name, text, where, words):
    if text is None:
        text = _shipped_pipeline()
        line = text.splitlines().index(next(x for x in text.splitlines() if "threshold: .NaN" in x)) + 1
        where = f":{line}:5"
    assert_mistake(load, tmp_path / name, text, where, words)


def test_a_base_job_template_refuses_them(tmp_path):
    from labcycle.deploy.pools import load_template

    template = tmp_path / "template.json"
    # Python's JSON reader takes NaN and reads 1e999 as infinity; the Prefect server takes neither.
    assert_mistake(load_template, template, '{"job_configuration": {"command": "NaN"},\n "variables": {"maximum": NaN}}',
                   ":2:27", "variables.maximum: NaN is not a finite number")
    assert_mistake(load_template, template, '{"variables": {"x": [1, -1e999]}}', ":1:25", "variables.x.1: -1e999 is not a finite number")


@pytest.mark.parametrize("command", ["tune", "run"])
def test_the_cli_refuses_them_before_any_work(tmp_path, command):
    cfg = tmp_path / "labcycle.yaml"
    cfg.write_text("tuning:\n  knowledge:\n    learning_rate: .nan\n  skills:\n    learning_rate: .inf\n")
    if command == "tune":
        args = ["tune", "--base-model", str(tmp_path), "--output", str(tmp_path / "out")]
    else:
        (tmp_path / "tax").mkdir()
        args = ["run", "--taxonomy", str(tmp_path / "tax"), "--base", "empty", "--output", str(tmp_path / "run")]
    res = labcycle(*args, "--config", str(cfg), cwd=tmp_path)
    assert_clean_failure(res, f"{cfg}:3:5: tuning.knowledge.learning_rate: NaN (not a number) is not a finite number")
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "Prefect" not in res.stdout + res.stderr  # refused before the server starts


def test_labcycle_tune_stops_a_diverging_phase(tiny_model, tmp_path):
    """A finite but absurd learning rate through the real CLI: the loss turns NaN within a few steps, the phase
    stops with one line and exit 1, and no adapter comes out (the release refuses one: tests/tasks/test_release.py)."""
    from tests.tasks.test_tune import ANSWER, QUESTIONS, write_chat

    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    cfg = tmp_path / "labcycle.yaml"
    cfg.write_text("tuning:\n  knowledge:\n    learning_rate: 1.0e+30\n    max_steps: 6\n")
    res = labcycle("tune", "--phase", "knowledge", "--base-model", str(tiny_model), "--knowledge-data", str(data),
                   "--config", str(cfg), "--output", str(tmp_path / "out"), cwd=tmp_path, timeout=180)
    assert_clean_failure(res, "the knowledge phase diverged: its loss became nan at step ",
                         "lower tuning.knowledge.learning_rate (now 1e+30)")
    assert not (tmp_path / "out" / "knowledge").exists()
