"""Labelling: turn records into labelled datasets, with less and more consistent human labelling.

- `dataset`: build classification / NER / instruction datasets, split them (stratified, k-fold)
  so that no identical or near-identical text lands in two splits, save as JSONL, CSV or a
  `datasets` directory.
- `labelstudio`: Label Studio tasks out (with model predictions as pre-annotations), completed
  annotations in.
- `weak`: labelling functions (keywords, regex, lexicons, a model) combined by majority vote or a
  learned-accuracy label model, with per-function coverage, overlap, conflict and accuracy.
- `classifier`: the small TF-IDF + logistic regression text classifier the other parts train.
- `active`: which items to label next (entropy, margin, diversity) and learning curves.
- `quality`: agreement between annotators (Cohen's and Fleiss' kappa), disagreements, label noise.
- `store`, `session`, `guard`, `app`: the local annotation web app behind `lmforge label serve`.

Nothing here imports heavy packages at module level; scikit-learn, FastAPI and `datasets` are
imported where they are used (`pip install 'lmforge[label]'`).
"""
