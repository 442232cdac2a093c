"""labcycle.yaml: checked against its schema before any work, with the file and line of a mistake."""

from __future__ import annotations

import pytest

from labcycle.flows import config
from labcycle.errors import LabcycleError
from tests.mistakes import assert_mistake


def test_defaults_without_a_file():
    cfg = config.load(None)
    assert cfg.taxonomy.folders == ("knowledge", "compositional_skills", "foundational_skills")
    assert cfg.chunking.bound == (1000, 100)


def test_values_from_a_file(tmp_path):
    f = tmp_path / "labcycle.yaml"
    f.write_text("taxonomy:\n  folders: [knowledge]\n  strict: true\nchunking:\n  tokenizer: /models/student\n  max_tokens: 256\n  overlap_tokens: 32\n")
    cfg = config.load(f)
    assert cfg.taxonomy.folders == ("knowledge",) and cfg.taxonomy.strict
    assert cfg.chunking.bound == (256, 32)
    assert cfg.digest() != config.load(None).digest()


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("chunking:\n  max_words: 1000\n  max_wrods: 10\n", ":3:3", "max_wrods"),
        ("taxonomy:\n  strict: maybe\n", ":2:3", "strict"),
        ("chunking:\n  max_words: 100\n  overlap_words: 100\n", "", "overlap_words must be smaller"),
        ("chunking: [1, 2]\n", ":1:1", "chunking"),
        ("a: [unclosed\n", ":2:1", "syntax"),
        ("tuning:\n  skills:\n    learning_rat: 1e-4\n", ":3:5", "learning_rat"),
        ("tuning:\n  method: qdora\n", ":2:3", "method"),
        # PyYAML's (YAML 1.1) gotcha: no dot, no signed exponent, so text; the message says what to write.
        ("tuning:\n  knowledge:\n    learning_rate: 1e-4\n", ":3:5", "was read as text, not a number: YAML 1.1 needs "
         "a dot and a signed exponent, so write 1.0e-4 or 0.0001"),
        ("tuning:\n  knowledge:\n    select: best\n", "", "eval_fraction"),
        ("remote:\n  deployments:\n    tune: tune/gpu\n", ":3:5", "set remote.storage"),
        ("remote:\n  storage: s3://b/l\n  deployments:\n    tune: gpu\n", ":4:5", "remote.deployments.tune"),
        ("remote:\n  storage: s3://b/l\n  deployments:\n    mix: mix/gpu\n", ":4:5", "remote.deployments.mix"),
    ],
)
def test_mistakes_name_the_file_line_and_key(tmp_path, text, where, words):
    assert_mistake(config.load, tmp_path / "labcycle.yaml", text, where, words)


def test_remote_stages(tmp_path):
    assert config.load(None).remote.deployments == {}
    f = tmp_path / "labcycle.yaml"
    f.write_text("remote:\n  storage: s3://bucket/labcycle\n  deployments:\n    tune: tune/gpu\n    evaluate: null\n"
                 "  timeout_s: 3600\n")
    remote = config.load(f).remote
    assert (remote.storage, remote.deployments, remote.timeout_s) == ("s3://bucket/labcycle", {"tune": "tune/gpu"}, 3600)
    assert config.load(f).digest() == config.load(None).digest()  # where a stage runs changes no result
    assert remote.leaf_groups == 1
    # generation fans out over runs of its deployment only: without one, the config says what to set
    f.write_text("remote:\n  storage: s3://bucket/labcycle\n  deployments:\n    tune: tune/gpu\n  leaf_groups: 4\n")
    with pytest.raises(LabcycleError, match="remote.leaf_groups splits generation") as err:
        config.load(f)
    assert err.value.where == f"{f}:5:3"
    f.write_text("remote:\n  storage: /shared\n  deployments:\n    generate: generate/gpu\n  leaf_groups: 4\n")
    assert config.load(f).remote.leaf_groups == 4
    assert config.load(f).digest() == config.load(None).digest()


def test_tuning_defaults_and_per_phase_settings(tmp_path):
    cfg = config.load(None).tuning
    assert (cfg.method, cfg.phase2_start, cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == ("qlora", "continue", 4, 32, "all-linear")
    assert cfg.attention == "auto"
    assert (cfg.knowledge.epochs, cfg.knowledge.learning_rate, cfg.skills.epochs, cfg.skills.learning_rate) == (7, 2e-4, 10, 6e-5)
    f = tmp_path / "labcycle.yaml"
    f.write_text("student:\n  model: models/student\ntuning:\n  method: lora\n  lora:\n    target_modules: [q_proj, v_proj]\n"
                 "  attention: eager\n  skills:\n    epochs: 2\n    eval_fraction: 0.1\n    select: best\n")
    loaded = config.load(f)
    assert loaded.student.model == "models/student"
    t = loaded.tuning
    assert t.method == "lora" and t.lora.target_modules == ("q_proj", "v_proj") and t.attention == "eager"
    assert (t.skills.epochs, t.skills.learning_rate, t.skills.select) == (2, 6e-5, "best")  # unset keys keep the phase default
    assert t.knowledge == config.load(None).tuning.knowledge


def test_missing_file(tmp_path):
    with pytest.raises(LabcycleError, match="not found"):
        config.load(tmp_path / "nope.yaml")


def test_a_later_cycles_plan_changes_generation_settings():
    g = config.load(None).generation
    first, later = g.settings_for("x"), g.settings_for("x", {"samples_per_seed_factor": 1.5, "sampling_seed_offset": 2,
                                                             "judge_strictness": 1})
    assert (later.samples_per_seed, later.seed_offset, later.judge_strictness) == (45, 2, 1)
    assert set(first.to_json()) == {"samples_per_seed", "max_rounds", "max_units_per_round", "max_tokens_cap"}
    assert first.to_json() != later.to_json()  # another cache key: this leaf is generated again


def test_a_later_cycles_plan_adds_epochs():
    from labcycle.tasks.tune.settings import with_plan

    t = config.load(None).tuning
    assert with_plan(t, None) == t
    more = with_plan(t, {"epochs_add": 2})
    assert (more.knowledge.epochs, more.skills.epochs) == (9, 12) and more.lora == t.lora


def test_document_size_cap(tmp_path):
    assert config.load(None).documents.max_bytes == 20 * 1024 * 1024
    f = tmp_path / "labcycle.yaml"
    f.write_text("documents:\n  max_bytes: 1000000\n")
    assert config.load(f).documents.max_bytes == 1_000_000
    assert_mistake(config.load, f, "documents:\n  max_bytes: 0\n", ":2:3", "max_bytes")


@pytest.mark.parametrize(("text", "where"), [("tuning: " + "[" * 30_000 + "]" * 30_000 + "\n", ":1:108"),
                                             ("tuning:\n" + "- " * 100_000 + "x\n", ":2:199")])
def test_a_config_nested_too_deeply_is_one_line(tmp_path, text, where):
    # 30,000 levels killed `run` and `tune` with SIGSEGV in libyaml's composer.
    assert_mistake(config.load, tmp_path / "labcycle.yaml", text, where, "nested more than 100 levels deep")


def test_max_concurrency_reaches_the_evaluation_judge(tmp_path):
    """--max-concurrency caps the judge as it caps generation; evaluation.concurrency caps it too."""
    from labcycle.tasks.evaluate.settings import evaluation_inputs

    cfg = config.load(None)
    endpoint = "http://127.0.0.1:9/v1"  # never reached: only named
    judge = lambda c, n: evaluation_inputs(c.evaluation, c.generation.teacher, endpoint, "teacher", n)["judge"]  # noqa: E731
    assert judge(cfg, None).max_concurrency == 8  # min(the teacher's 32, evaluation.concurrency 8)
    assert judge(cfg, 3).max_concurrency == 3
    assert judge(cfg, 64).max_concurrency == 8
    f = tmp_path / "labcycle.yaml"
    f.write_text("generation:\n  teacher:\n    max_concurrency: 2\nevaluation:\n  concurrency: 16\n")
    assert judge(config.load(f), None).max_concurrency == 2


def test_a_parsed_config_round_trips_through_json_as_a_remote_stage_receives_it(tmp_path):
    """lab_cycle hands a remote stage the config it parsed, as JSON; the stage flow types it again."""
    from pydantic import TypeAdapter

    f = tmp_path / "labcycle.yaml"
    f.write_text("taxonomy:\n  folders: [knowledge]\ngeneration:\n  leaves: {a: {samples_per_seed: 2}}\n"
                 "tuning:\n  lora: {target_modules: [q_proj, v_proj]}\nevaluation:\n  suites: [x.yaml]\n")
    cfg = config.load(f)
    again = TypeAdapter(config.Config).validate_python(cfg.to_json())
    assert again == cfg and again.digest() == cfg.digest()
    assert config.settings(cfg) is cfg and config.settings(str(f)) == cfg


def test_a_runs_teacher_endpoint_replaces_the_configs_replicas(tmp_path):
    f = tmp_path / "labcycle.yaml"
    f.write_text("generation:\n  teacher:\n    model: m\n    endpoints: ['http://a:1/v1', 'http://b:1/v1']\n")
    cfg = config.load(f)
    assert cfg.with_teacher(None, None, 4).generation.teacher.urls == ["http://a:1/v1", "http://b:1/v1"]
    teacher = cfg.with_teacher("http://c:1/v1", "m2", None).generation.teacher
    assert (teacher.urls, teacher.model, teacher.max_concurrency) == (["http://c:1/v1"], "m2", 32)
