"""The Steps of a recipe, one per section, in the order `flow.recipe.build_steps` runs them:

- `data`:  input (sources cut into shards), pipeline (the stages)
- `lm`:    tokenizer, tokens (train/val token shards), pretrain (GPT or BERT), generate (samples)
- `tasks`: finetune, augment, label, evaluate, report

Each wires the library call its command makes to the run directory the runner owns.
"""
