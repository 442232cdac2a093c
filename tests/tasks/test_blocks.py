"""The block package's layout: one module per registered block, named after it, and each block's declared
row columns (`inputs`, `outputs`), checked against the pipeline schema and against what the block does."""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import re

import pytest

from labcycle.schemas import load as load_schema
from labcycle.tasks.generate import blocks
from labcycle.tasks.generate.blocks import UnitContext
from labcycle.tasks.generate.spec import BlockSpec

PACKAGE = "labcycle.tasks.generate.blocks"
FIELD = re.compile(r"^_?[a-z][a-z0-9_]*$")
PARAM = re.compile(r"^\{([a-z_]+)\}$")


def _schema_params() -> dict[str, set[str]]:
    """Block type -> the parameters the pipeline schema allows for it."""
    schema = load_schema("pipeline.schema.json")
    return {c["if"]["properties"]["type"]["const"]: set(c["then"]["properties"]) - {"name", "type"}
            for c in schema["$defs"]["block"]["allOf"]}


@pytest.mark.parametrize("name", sorted(blocks.REGISTRY))
def test_each_registered_block_is_the_class_of_its_own_module(name):
    cls = blocks.REGISTRY[name]
    module = importlib.import_module(f"{PACKAGE}.{name}")
    assert cls.__module__ == module.__name__
    assert getattr(module, cls.__name__) is cls
    # One block per module: the only Block subclass defined there is the registered one.
    own = [c for _, c in inspect.getmembers(module, inspect.isclass)
           if issubclass(c, blocks.Block) and c.__module__ == module.__name__]
    assert own == [cls]
    assert getattr(blocks, cls.__name__) is cls  # re-exported by the package


@pytest.mark.parametrize("name", sorted(blocks.REGISTRY))
def test_each_block_declares_the_columns_it_reads_and_writes(name):
    cls = blocks.REGISTRY[name]
    params = _schema_params()[name]
    for attr in ("inputs", "outputs"):
        assert attr in vars(cls), f"{cls.__name__} does not declare {attr} itself"
        value = vars(cls)[attr]
        assert isinstance(value, tuple) and all(isinstance(c, str) for c in value), (name, attr, value)
        assert len(set(value)) == len(value), (name, attr, value)
        for column in value:
            m = PARAM.match(column)
            if m:  # a column named by a spec parameter: the schema must have that parameter
                assert m.group(1) in params, (name, attr, column, params)
            else:
                assert FIELD.match(column), (name, attr, column)
    assert cls.inputs, f"{name} reads nothing"
    # Teacher blocks add something to every row they keep (a generated field, a judge score).
    if name in blocks.TEACHER_TYPES:
        assert cls.outputs, name


def _ctx(seed_texts=()) -> UnitContext:
    return UnitContext(teacher=None, render=lambda name, v: "", leaf={"id": "leaf"}, examples=[], seed=7,
                       seed_texts=list(seed_texts), dedup={}, stats={})


# The blocks that need no teacher, with parameters and rows that keep some rows and drop others.
OFFLINE = {
    "length": ({"field": "answer", "min_words": 2, "max_words": 5},
               [{"question": "Why?", "answer": "Because it is.", "_scores": {"j": 1}},
                {"question": "How?", "answer": "No"}]),
    "refusal": ({"field": "answer"},
                [{"question": "Why?", "answer": "The sky scatters blue light."},
                 {"question": "How?", "answer": "I'm sorry, but as an AI language model I cannot help with that."}]),
    "seed_leakage": ({"field": "answer", "max_share": 0.5},
                     [{"answer": "Photosynthesis turns light into sugar in leaves."},
                      {"answer": "the quick brown fox jumps over the lazy dog"}]),
    "dedup": ({"field": "question", "threshold": 0.8},
              [{"question": "What colour is the sky on a clear day?"},
               {"question": "What colour is the sky on a clear day?"}]),
    "lexical_support": ({"source": "context", "min_support": 0.5},
                        [{"context": "Paris is the capital of France.", "answer": "The capital of France is Paris."},
                         {"context": "Paris is the capital of France.",
                          "answer": "Bananas grow quickly in tropical gardens."}]),
    "pii": ({"fields": ["answer"]},
            [{"question": "Mail jane@example.com?", "answer": "Write to jane@example.com today."},
             {"question": "Hi", "answer": "Hello there."}]),
}


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_a_block_changes_only_the_columns_it_declares_as_outputs(name):
    params, rows = OFFLINE[name]
    cls = blocks.REGISTRY[name]
    declared: set[str] = set()
    for column in cls.outputs:
        m = PARAM.match(column)
        declared.update(params[m.group(1)] if m else [column])
    block = blocks.build(BlockSpec(name=name, type=name, params=params))
    ctx = _ctx(seed_texts=["The quick brown fox jumps over the lazy dog."])
    kept = 0
    for row in rows:  # one row at a time, so each row that goes on is compared with the one it came from
        before = copy.deepcopy(row)
        out = asyncio.run(block.run([row], ctx))
        assert row == before  # the row it was given is never changed in place
        assert len(out) <= 1
        if not out:
            continue
        kept += 1
        changed = {k for k in set(out[0]) | set(before) if out[0].get(k) != before.get(k)}
        assert changed <= declared, (name, changed, declared)
        if not cls.outputs:  # a filter only drops rows: what goes on is the row it was given
            assert out[0] is row
        if name == "pii" and "@" in before["answer"]:  # the declared output is really written
            assert changed == {"answer"}
    assert 0 < kept < len(rows) or name == "pii"  # the rows exercise both outcomes (pii keeps all, redacted)
