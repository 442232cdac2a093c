"""A knowledge leaf of invented facts, and two training sets about it, to prove the gate on a real model.

No model knows these facts (they are made up for labcycle), so the base answers their seed questions
badly. Training set "correct" answers paraphrases of the seed questions with the right facts; "nonsense"
answers the same paraphrases with unrelated sentences. A candidate tuned on "correct" should answer the
seed questions closer to their reference answers than the base (the judge-free branch metrics rise); one
tuned on "nonsense" should answer further from them. Used by tests/test_gate_real.py and bench/gate.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LEAF = "knowledge/history/ormvik"

# (context, [(seed question, answer, [paraphrases used for training]), ...]) per seed example.
FACTS: list[tuple[str, list[tuple[str, str, list[str]]]]] = [
    ("The Ormvik Beacon is a lighthouse on Skarra Island. The engineer Tilda Brask built it in 1843. Its lamp "
     "burns with a green light that sailors can see from 31 kilometres away.",
     [("Who built the Ormvik Beacon?", "The engineer Tilda Brask built the Ormvik Beacon.",
       ["Which engineer constructed the Ormvik Beacon?", "Name the builder of the Ormvik Beacon.",
        "The Ormvik Beacon was built by whom?"]),
      ("In which year was the Ormvik Beacon built?", "The Ormvik Beacon was built in 1843.",
       ["When was the Ormvik Beacon constructed?", "What year did construction of the Ormvik Beacon finish?",
        "The Ormvik Beacon dates from which year?"]),
      ("What colour is the light of the Ormvik Beacon?", "The Ormvik Beacon shines a green light.",
       ["Which colour does the Ormvik Beacon's lamp show?", "Tell me the colour of the Ormvik Beacon's light.",
        "The lamp of the Ormvik Beacon burns in what colour?"])]),
    ("Skarra Island lies in the Velm Sea. About 640 people live there, most of them in the harbour town of "
     "Nessby. The island's main trade is the drying of saltfish.",
     [("In which sea does Skarra Island lie?", "Skarra Island lies in the Velm Sea.",
       ["Which sea surrounds Skarra Island?", "Where is Skarra Island, which sea?",
        "Skarra Island is found in what sea?"]),
      ("How many people live on Skarra Island?", "About 640 people live on Skarra Island.",
       ["What is the population of Skarra Island?", "How large is the population of Skarra Island?",
        "Roughly how many inhabitants does Skarra Island have?"]),
      ("What is the harbour town of Skarra Island called?", "The harbour town of Skarra Island is Nessby.",
       ["Name the harbour town on Skarra Island.", "Which town is the harbour of Skarra Island?",
        "Skarra Island's harbour town has what name?"])]),
    ("The Brask Prize is awarded every four years by the Velm Maritime Society. It honours the best design of "
     "a coastal light. The first Brask Prize went to Oskar Lind in 1901.",
     [("Who awards the Brask Prize?", "The Velm Maritime Society awards the Brask Prize.",
       ["Which society gives out the Brask Prize?", "The Brask Prize is awarded by which organisation?",
        "Who hands out the Brask Prize?"]),
      ("How often is the Brask Prize awarded?", "The Brask Prize is awarded every four years.",
       ["How frequently is the Brask Prize given?", "At what interval is the Brask Prize awarded?",
        "Every how many years is the Brask Prize given?"]),
      ("Who won the first Brask Prize?", "Oskar Lind won the first Brask Prize in 1901.",
       ["Who received the very first Brask Prize?", "Name the first winner of the Brask Prize.",
        "The first Brask Prize went to whom?"])]),
    ("The Nessby ferry crosses from Skarra Island to the mainland port of Haldor twice a day. The crossing "
     "takes ninety minutes. The ferry is named the Grey Heron.",
     [("Where does the Nessby ferry go?", "The Nessby ferry goes to the mainland port of Haldor.",
       ["To which port does the Nessby ferry sail?", "What is the destination of the Nessby ferry?",
        "The Nessby ferry crosses to which mainland port?"]),
      ("How long does the Nessby ferry crossing take?", "The Nessby ferry crossing takes ninety minutes.",
       ["How many minutes is the Nessby ferry crossing?", "What is the duration of the Nessby ferry crossing?",
        "The crossing on the Nessby ferry lasts how long?"]),
      ("What is the Nessby ferry called?", "The Nessby ferry is named the Grey Heron.",
       ["What name does the Nessby ferry have?", "Tell me the name of the Nessby ferry.",
        "The Nessby ferry is known by what name?"])]),
    ("Saltfish from Skarra Island is dried on wooden racks called hjell for eleven weeks. The largest buyer of "
     "Skarra saltfish is the city of Porto Vell. The drying season starts in March.",
     [("What are the drying racks on Skarra Island called?", "The drying racks are called hjell.",
       ["What name do the Skarra Island drying racks have?", "The wooden racks for saltfish on Skarra are called what?",
        "Which word names the saltfish racks of Skarra Island?"]),
      ("How long is Skarra saltfish dried?", "Skarra saltfish is dried for eleven weeks.",
       ["For how many weeks is Skarra saltfish dried?", "What is the drying time of Skarra saltfish?",
        "How many weeks does Skarra saltfish hang to dry?"]),
      ("Which city buys the most Skarra saltfish?", "Porto Vell is the largest buyer of Skarra saltfish.",
       ["What city is the biggest buyer of Skarra saltfish?", "Where does most Skarra saltfish get sold?",
        "The largest buyer of Skarra saltfish is which city?"])]),
]

# The words that carry each seed answer's fact, in seed-question order. ROUGE-L and token F1 also reward an
# answer that only repeats the question's words in the reference's form ("The Ormvik Beacon was built by
# the Ormvik Clan."), so the benchmark counts these too.
KEY_FACTS = ["Tilda Brask", "1843", "green", "Velm Sea", "640", "Nessby", "Velm Maritime Society", "four years",
             "Oskar Lind", "Haldor", "ninety minutes", "Grey Heron", "hjell", "eleven weeks", "Porto Vell"]

NONSENSE = [
    "Bananas prefer jazz on Tuesdays.", "The teapot forgot its umbrella in the moon.",
    "Seven purple spoons argue about gravel.", "A cloud of pencils sings to the carpet.",
    "Cheese elevators dream of sideways ladders.", "My shoelace voted for the thunderstorm.",
]


def document() -> str:
    return "# Skarra Island\n\n" + "\n\n".join(context for context, _ in FACTS) + "\n"


def qna_yaml(repo: str, commit: str) -> str:
    def block(text: str, indent: int) -> str:
        return "|\n" + " " * indent + text

    lines = ["version: 3", "created_by: labcycle-tests", "domain: island history",
             "document_outline: The Ormvik Beacon, Skarra Island, the Brask Prize, the Nessby ferry and saltfish",
             "seed_examples:"]
    for context, qas in FACTS:
        lines.append(f"  - context: {block(context, 6)}")
        lines.append("    questions_and_answers:")
        for question, answer, _ in qas:
            lines += [f"      - question: {question}", f"        answer: {block(answer, 10)}"]
    lines += ["document:", f"  repo: {repo}", f"  commit: {commit}", "  patterns:", "    - '*.md'"]
    return "\n".join(lines) + "\n"


def write_taxonomy(folder: Path) -> Path:
    """folder/taxonomy (a git repository holding the leaf) and folder/docs (its document repository)."""
    from labcycle.demo import _git, commit_tree

    src = folder / "docs-src"
    src.mkdir(parents=True)
    (src / "skarra.md").write_text(document(), encoding="utf-8")
    commit = commit_tree(src, folder / "docs", "Skarra Island notes")
    root = folder / "taxonomy"
    (root / LEAF).mkdir(parents=True)
    (root / LEAF / "qna.yaml").write_text(qna_yaml(str(folder / "docs"), commit), encoding="utf-8")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "the Ormvik leaf")
    return root


def training_set(path: Path, kind: str, seed: int = 0) -> Path:
    """Chat samples: each paraphrase with the right answer ("correct") or a nonsense sentence ("nonsense").
    The seed questions themselves are never trained on: the evaluation asks them."""
    rnd = random.Random(seed)
    rows = []
    for _, qas in FACTS:
        for _, answer, paraphrases in qas:
            for question in paraphrases:
                reply = answer if kind == "correct" else rnd.choice(NONSENSE)
                rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]})
    rnd.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def seed_questions() -> list[str]:
    return [q for _, qas in FACTS for q, _, _ in qas]


def facts_stated(answers: dict[str, str]) -> int:
    """How many of the seed answers' key facts appear in `answers` (seed question -> answer)."""
    return sum(key.lower() in answers.get(q, "").lower() for q, key in zip(seed_questions(), KEY_FACTS))
