"""The train stage: fine-tune the student on the selected supporting samples (LoRA, full or SPIDER) on Ray Train."""
