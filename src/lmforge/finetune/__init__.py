"""Fine-tuning: a pretrained model (or a fresh one) trained on a labelled task (classification, NER, instructions).

The labelled data itself (examples, splits, loaders, the built-in tasks) lives in `lmforge.tasks`;
this package encodes it for a model, adds the task head and trains. Nothing heavy is imported
here, to keep `import lmforge` fast.
"""
