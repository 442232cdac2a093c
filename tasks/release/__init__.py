"""Release: the gated candidate as a new, immutable version in a model registry.

The registry is a local folder or any fsspec URL (s3://, gs://, memory://, ...):

    REGISTRY/NAME/v3/adapter/           PEFT adapter + tokenizer, as the skills phase saved it (model/ after full tuning)
    REGISTRY/NAME/v3/merged/            optional: the adapter merged into the base
    REGISTRY/NAME/v3/model_card.md      the phase's card plus a release section (version, gate decision, eval summary)
    REGISTRY/NAME/v3/eval_report.json, loss.png, dataset_cards/<phase>.md
    REGISTRY/NAME/v3/release.json       written last: only a version holding it exists for readers

- candidate.py: what is released and its fingerprint (the idempotency key);
- registry.py: versions, the atomic write (aside, move, release.json), released_versions;
- card.py: the model card's release section;
- stage.py: the Prefect task (a transaction whose rollback removes what was written aside), the
  `labcycle.model.released` event, the optional Hugging Face Hub push;
- approval.py: the optional human approval (a paused flow run with a typed form).
"""

from labcycle.tasks.release.approval import ApprovalInput, request_approval
from labcycle.tasks.release.candidate import Candidate, fingerprint
from labcycle.tasks.release.registry import release, released_versions
from labcycle.tasks.release.stage import EVENT, emit_released, push_to_hub, release_task

__all__ = ["ApprovalInput", "Candidate", "EVENT", "emit_released", "fingerprint", "push_to_hub", "release",
           "release_task", "released_versions", "request_approval"]
