"""The blocks a pipeline spec is made of, registered by the names schemas/pipeline.schema.json enumerates,
one module per block, named after it (base.py holds what they share).

A block takes the rows of one unit of work (dicts of fields: question, answer, context, chunk, ...) and
returns the rows that go on. Teacher blocks (generate, judge) send every row's request at once, so the
teacher's concurrency cap, not the pipeline, sets how busy the server is. Every dropped row is counted
against the block that dropped it, with a few examples, for the yield report; a row a block changes but
keeps (personal data redacted) is counted apart, as `redacted`.

Generation-time safety (docs/safety.md): `grounding_judge` and `lexical_support` drop answers their source
(the chunk or context) does not support; `safety_judge` drops harmful samples; `pii` redacts or drops
personal data.
"""

from __future__ import annotations

from labcycle.tasks.generate.blocks.base import MAX_EXAMPLES, Block, BlockStats, Row, UnitContext, hash_text
from labcycle.tasks.generate.blocks.dedup import Dedup
from labcycle.tasks.generate.blocks.generate import Generate
from labcycle.tasks.generate.blocks.grounding_judge import GroundingJudge
from labcycle.tasks.generate.blocks.judge import Judge
from labcycle.tasks.generate.blocks.length import Length
from labcycle.tasks.generate.blocks.lexical_support import LexicalSupport
from labcycle.tasks.generate.blocks.pii import Pii
from labcycle.tasks.generate.blocks.refusal import Refusal
from labcycle.tasks.generate.blocks.safety_judge import SAFETY_CATEGORIES, SafetyJudge
from labcycle.tasks.generate.blocks.seed_leakage import SeedLeakage
from labcycle.tasks.generate.spec import BlockSpec

__all__ = ["MAX_EXAMPLES", "REGISTRY", "SAFETY_CATEGORIES", "SOURCE_TYPES", "TEACHER_TYPES", "Block", "BlockStats",
           "Dedup", "Generate", "GroundingJudge", "Judge", "Length", "LexicalSupport", "Pii", "Refusal", "Row",
           "SafetyJudge", "SeedLeakage", "UnitContext", "build", "hash_text"]

REGISTRY: dict[str, type[Block]] = {
    "generate": Generate,
    "judge": Judge,
    "dedup": Dedup,
    "length": Length,
    "refusal": Refusal,
    "seed_leakage": SeedLeakage,
    "grounding_judge": GroundingJudge,
    "lexical_support": LexicalSupport,
    "safety_judge": SafetyJudge,
    "pii": Pii,
}
# The block types that send requests to the teacher.
TEACHER_TYPES = frozenset(name for name, cls in REGISTRY.items() if issubclass(cls, (Generate, Judge)))
# The block types that check an answer against its source: a freeform skill has none to offer.
SOURCE_TYPES = frozenset({"grounding_judge", "lexical_support"})


def build(spec: BlockSpec) -> Block:
    return REGISTRY[spec.type](spec)
