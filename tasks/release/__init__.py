"""Release: the gated candidate as a new, immutable version in a model registry.

The registry is a local folder or any fsspec URL (s3://, gs://, memory://, ...). A version is laid out as
a Hugging Face Hub model repo, so it can be pushed as it is and loaded from its folder or its repo:

    REGISTRY/NAME/v3/adapter_config.json, adapter_model.safetensors, tokenizer files
                                        the skills phase's adapter at the root (a whole model's files after full tuning)
    REGISTRY/NAME/v3/README.md          the card: Hub front matter (base_model, datasets, license, tags,
                                        model-index), the headline, usage, evaluation, lineage, training
    REGISTRY/NAME/v3/merged/            optional: the adapter merged into the base
    REGISTRY/NAME/v3/eval_report.json, loss.png, dataset_cards/<phase>.md
    REGISTRY/NAME/v3/release.json       written last: only a version holding it exists for readers

No file of a version names a path of the machine that wrote it: paths are relative to the run folder.

- candidate.py: what is released and its fingerprint (the idempotency key);
- registry.py: versions, the atomic write (aside, move, release.json), released_versions;
- card.py: the card (README.md) with huggingface_hub's ModelCard;
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
