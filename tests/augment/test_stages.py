"""Augmentation stages on records: splits, labels, meta, ids, NER spans, and a real `lmforge run` pipeline."""

import json

import pytest

from lmforge.augment.stages import EdaStage, SplitAssign, hashed_split
from lmforge.pipeline import run_chain
from lmforge.pipeline.registry import resolve_stage
from lmforge.records import Record, make_id

REVIEWS = [
    ("这家酒店的房间很干净，服务也很热情，下次还会再来。", "pos"),
    ("房间太小了，空调的声音很大，晚上根本睡不着。", "neg"),
    ("快递很快，包装完好，书的印刷质量也不错。", "pos"),
    ("价格偏高，早餐的品种太少，不值这个价钱。", "neg"),
    ("The staff were friendly and the room was quiet and clean.", "pos"),
    ("The breakfast was cold and the shower did not work at all.", "neg"),
]


def records(split_of=lambda i: "train"):
    return [Record(id=f"r{i}", text=t, lang="", meta={"label": y, "split": split_of(i)})
            for i, (t, y) in enumerate(REVIEWS)]


def test_copies_follow_their_original_with_label_split_and_meta():
    out, stats = run_chain([EdaStage(num_aug=3)], records())
    out = list(out)
    originals = {r.id: r for r in records()}
    copies = [r for r in out if "augmented_from" in r.meta]
    assert len(copies) == stats[0].records_out - len(REVIEWS) > len(REVIEWS)
    assert [r.id for r in out if "augmented_from" not in r.meta] == list(originals)
    for c in copies:
        src = originals[c.meta["augmented_from"]]
        assert c.meta["label"] == src.meta["label"] and c.meta["split"] == "train"
        assert c.meta["augment"]["stage"] == "eda" and c.meta["augment"]["changes"] >= 1
        assert c.meta["augment"]["op"] in ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")
        assert c.text != src.text
    # a copy comes right after its original or after another copy of it
    for prev, cur in zip(out, out[1:], strict=False):
        if "augmented_from" in cur.meta:
            assert cur.meta["augmented_from"] in (prev.id, prev.meta.get("augmented_from"))
    assert sum(stats[0].counters[k] for k in stats[0].counters if k.startswith("op_")) == len(copies)


def test_ids_and_texts_are_reproducible_and_seed_dependent():
    def run(seed):
        out, _ = run_chain([EdaStage(num_aug=2, seed=seed)], records())
        return [(r.id, r.text) for r in out]

    first = run(0)
    assert first == run(0) and first != run(1)
    copy_ids = [i for i, _ in first if not i.startswith("r")]
    assert copy_ids[0] == make_id("r0", "augment:eda:0:0") and len(set(copy_ids)) == len(copy_ids)


def test_validation_test_and_unsplit_records_are_never_augmented():
    split = {0: "train", 1: "val", 2: "test", 3: "validation", 4: "train", 5: None}
    recs = records(lambda i: split[i])
    del recs[5].meta["split"]
    stage = EdaStage(num_aug=2)
    out, stats = run_chain([stage], recs)
    out = list(out)
    assert {r.meta["augmented_from"] for r in out if "augmented_from" in r.meta} == {"r0", "r4"}
    assert all(r.meta["split"] == "train" for r in out if "augmented_from" in r.meta)
    counters = stats[0].counters
    assert counters["no_split"] == 1 and counters["split_val_kept_as_is"] == 1 and counters["split_test_kept_as_is"] == 1


def test_assigned_splits_hash_the_id_so_every_run_agrees():
    assign = SplitAssign(val=0.2, test=0.2)
    splits = [hashed_split(f"doc-{i}", 0, assign) for i in range(2000)]
    assert splits == [hashed_split(f"doc-{i}", 0, assign) for i in range(2000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["val"] - 0.2) < 0.03 and abs(share["test"] - 0.2) < 0.03
    recs = records()
    for r in recs:
        del r.meta["split"]
    out = list(run_chain([EdaStage(num_aug=1, assign_splits={"val": 0.3, "test": 0.3})], recs)[0])
    for r in out:
        if "augmented_from" in r.meta:
            assert hashed_split(r.meta["augmented_from"], 0, SplitAssign(val=0.3, test=0.3)) == "train"
        else:
            assert r.meta["split"] == hashed_split(r.id, 0, SplitAssign(val=0.3, test=0.3))


def test_copies_are_not_augmented_again_by_a_later_stage():
    out, stats = run_chain([EdaStage(num_aug=2), EdaStage(num_aug=2, seed=5)], records())
    out = list(out)
    sources = {r.meta["augmented_from"] for r in out if "augmented_from" in r.meta}
    assert sources == {r.id for r in records()}
    assert stats[1].records_in - stats[1].records_out < 0  # the second stage added copies of originals only


def test_ner_spans_move_with_their_words_in_both_span_styles():
    text = "新华社记者今天在北京报道了中国银行的新政策。"
    spans = [[0, 3, "ORG"], [8, 10, "LOC"], [13, 17, "ORG"]]
    recs = [Record(id="n0", text=text, meta={"label": spans, "split": "train"}),
            Record(id="n1", text=text, meta={"ents": {"spans": [{"start": s, "end": e, "label": t} for s, e, t in spans]},
                                             "split": "train"})]
    out = list(run_chain([EdaStage(num_aug=6)], recs[:1])[0]) + \
        list(run_chain([EdaStage(num_aug=6, label_field="ents.spans")], recs[1:])[0])
    copies = [r for r in out if "augmented_from" in r.meta]
    assert len(copies) >= 6
    for c in copies:
        got = c.meta["label"] if c.meta["augmented_from"] == "n0" else \
            [[d["start"], d["end"], d["label"]] for d in c.meta["ents"]["spans"]]
        assert [(c.text[s:e], t) for s, e, t in got] == [("新华社", "ORG"), ("北京", "LOC"), ("中国银行", "ORG")]


def test_bad_labels_pass_unchanged_and_are_counted():
    recs = [Record(id="a", text="房间很干净，服务也很好。", meta={"split": "train"}),
            Record(id="b", text="房间很干净，服务也很好。", meta={"label": [[3, 99, "LOC"]], "split": "train"}),
            Record(id="c", text="房间很干净，服务也很好。", meta={"label": {"x": 1}, "split": "train"})]
    out, stats = run_chain([EdaStage()], recs)
    assert [r.id for r in out] == ["a", "b", "c"]
    assert stats[0].counters == {"no_label": 1, "bad_spans": 1, "bad_label": 1}


@pytest.mark.parametrize(("name", "cfg", "message"), [
    ("eda", {"num_aug": 0}, "eda.num_aug: Input should be greater than or equal to 1 (got 0)"),
    ("eda", {"zh_synonyms": "embedding"}, "synonyms from 'embedding' need embedding"),
    ("eda", {"assign_splits": {"val": 0.5, "test": 0.5}}, "val + test must be below 1"),
    ("back_translate", {"forward": "a"}, "back_translate.backward: Field required"),
    ("back_translate", {"forward": "a", "backward": "b", "num_aug": 3}, "need sample: true"),
    ("back_translate", {"forward": "a", "backward": "b", "min_chrf": 80, "max_chrf": 50}, "min_chrf (80.0) is above"),
    ("contextual_substitute", {"model": "m", "fraction": 0}, "contextual_substitute.fraction: Input should be greater"),
])
def test_stage_configs_name_the_field(name, cfg, message):
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        resolve_stage(name)(cfg)
    assert message in str(info.value)


def test_eda_stage_in_a_recipe_run_matches_in_memory_and_keeps_splits(tmp_path):
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe
    from lmforge.records import read_parquet

    data = tmp_path / "labelled.jsonl"
    rows = [{"id": f"r{i}", "text": t, "meta": {"label": y, "split": "train" if i % 3 else "test"}}
            for i, (t, y) in enumerate(REVIEWS[:4] * 4)]
    for i, row in enumerate(rows):
        row["id"] = f"r{i}"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = parse_recipe({"name": "aug", "input": {"files": {"paths": [str(data)]}, "shard_size": 8},
                           "executor": {"kind": "local", "workers": 2},
                           "pipeline": [{"eda": {"num_aug": 2, "seed": 3}}]})
    result = run_recipe(recipe, tmp_path / "run")
    on_disk = [r for shard in sorted(result.output_dir.glob("shard-*.parquet")) for r in read_parquet(shard)]
    inputs = [Record.from_dict(r) for r in rows]
    in_memory = list(run_chain([EdaStage(num_aug=2, seed=3)], inputs)[0])
    assert sorted((r.id, r.text) for r in on_disk) == sorted((r.id, r.text) for r in in_memory)
    test_ids = {r["id"] for r in rows if r["meta"]["split"] == "test"}
    assert not any(r.meta.get("augmented_from") in test_ids for r in on_disk)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert "eda" in json.dumps(stats) and "split_test_kept_as_is" in json.dumps(stats)
