"""`preview_run`: the (original, copy) pairs `lmforge augment --preview N` prints, read from the run."""

from lmforge.augment.task import AugmentTaskConfig, preview_run, run_augment
from lmforge.config import validate


def test_preview_pairs_each_copy_with_its_original(tmp_path):
    cfg = validate(AugmentTaskConfig, {"data": {"builtin": "zh_sentiment", "train_limit": 20},
                                       "operations": [{"eda": {"num_aug": 2}}]})
    result = run_augment(cfg, tmp_path / "run")
    copies = [e for e in result.data.train if "augmented_from" in e.meta]
    pairs = preview_run(tmp_path / "run", len(copies) + 5)
    assert len(pairs) == len(copies) > 2
    assert [row["text"] for _, row in pairs] == [e.text for e in copies]  # in file order
    for original, copy in pairs:
        assert copy["meta"]["augmented_from"] == original["id"] and "meta" not in original
        assert copy["label"] == original["label"] and copy["text"] != original["text"]
    assert preview_run(tmp_path / "run", 2) == pairs[:2] and preview_run(tmp_path / "run", 0) == []
