"""Two-phase tuning of the student (knowledge, then skills): QLoRA by default, with TRL, PEFT and bitsandbytes."""
