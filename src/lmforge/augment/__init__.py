"""Data augmentation for labelled Chinese and English text: EDA, back-translation, contextual substitution.

Each operation is a pipeline stage (`eda`, `back_translate`, `contextual_substitute`) that reads
labelled records (`meta.label`: a class name, or spans for NER; `meta.split`) and yields every
record unchanged followed by its augmented copies. A copy keeps the label (spans moved with the
words they cover), carries `meta.augmented_from` (the original id) and `meta.augment` (the
operation and what it changed), and has the original's split; records of other splits than
`train` are never augmented, so no augmented text of a training example can land in validation or
test. `lmforge augment RECIPE` applies the same stages to a labelled task (built-in or a file) and
writes a JSONL that `lmforge finetune` reads with its splits kept.

Modules: `text` (segmentation and protected spans), `lexicon` (offline synonym sources),
`eda`, `backtranslate`, `contextual`, `stages`, `task` (the recipe flow). Nothing heavy is
imported here, to keep `import lmforge` fast.
"""
