"""Fine-tuning: labelled datasets (classification, NER, instructions) and the built-in bilingual tasks.

`finetune.data` turns a user's labelled files (JSONL, CSV, lmforge record shards, Label Studio
exports) into a `TaskData` with deterministic, stratified train/val/test splits; `finetune.builtin_tasks`
builds ready-made Chinese and English tasks from text that ships inside installed packages, so
fine-tuning can be tried and tested offline. Nothing heavy is imported here, to keep `import lmforge` fast.
"""
