"""Labelled data: typed examples per task kind, the splits of a task, and the readers that make them.

- `tasks.examples`: `ClassificationExample`, `NerExample`, `InstructionExample`,
  `ConversationExample` (of `Turn`s), `PreferenceExample`, and `TaskData` (three splits and a label set);
- `tasks.spans`: spans, tokens and BIO tags converted into one another, in one place;
- `tasks.splits`: deterministic stratified splits, deduplication, `make_task`;
- `tasks.loaders`: JSONL, CSV/TSV, lmforge record shards and Label Studio exports;
  `tasks.chat`: conversations and preference pairs from JSON lines;
- `tasks.builtin`: ready-made Chinese and English tasks from text shipped inside installed packages.

Everything that trains on, labels, augments or serves labelled data reads it through here, so a
file means the same examples, splits and ids everywhere. Nothing heavy is imported here, to keep
`import lmforge` fast.
"""
