import gzip
import json
import logging

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.records import Record, write_parquet
from lmforge.tasks.loaders import (
    LoaderConfig,
    load_csv,
    load_examples,
    load_jsonl,
    load_label_studio,
    load_records,
)
from lmforge.tasks.splits import make_task

# --------------------------------------------------------------------------- JSONL and CSV


def _write(path, lines):
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" if not isinstance(x, str) else x + "\n"
                            for x in lines), encoding="utf-8")
    return path


def test_load_jsonl_classification_and_errors_name_file_and_line(tmp_path, caplog):
    path = _write(tmp_path / "d.jsonl", [{"text": "好评", "label": "pos", "id": 7}, "", {"text": "差评", "label": 0},
                                          "{not json", {"text": "no label"}, {"text": "x", "label": ["a"]}])
    with pytest.raises(InputError, match=r"d\.jsonl:4: not valid JSON"):
        load_jsonl(path)
    with caplog.at_level(logging.WARNING):
        rows = load_jsonl(path, on_error="skip")
    assert [(e.text, e.label) for e in rows] == [("好评", "pos"), ("差评", "0")]
    assert rows[0].meta == {"where": "d.jsonl:1", "id": 7}
    assert "skipped 3 bad rows, kept 2" in caplog.text and "d.jsonl:4" in caplog.text
    path.write_text('{"text": "no label"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"d\.jsonl:1: no field 'label' \(fields: text\)"):
        load_jsonl(path)
    with pytest.raises(InputError, match="file not found"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="on_error: must be one of"):
        load_jsonl(path, on_error="ignore")


def test_load_jsonl_ner_instruction_and_gzip(tmp_path):
    rows = [{"tokens": ["EU", "rejects", "German", "call"], "tags": ["I-ORG", "O", "I-MISC", "O"]},
            {"text": "江泽民在北京会见Bill Clinton。", "label": [{"start": 0, "end": 3, "label": "PER"},
                                                         [4, 6, "LOC"], {"start": 8, "end": 20, "label": "PER"}]}]
    ner = load_jsonl(_write(tmp_path / "n.jsonl", rows), kind="ner")
    assert ner[0].tags == ["B-ORG", "O", "B-MISC", "O"]  # IOB1 read as BIO
    assert list(zip(ner[1].tokens, ner[1].tags, strict=True)) == [
        ("江", "B-PER"), ("泽", "I-PER"), ("民", "I-PER"), ("在", "O"), ("北", "B-LOC"), ("京", "I-LOC"),
        ("会", "O"), ("见", "O"), ("Bill", "B-PER"), ("Clinton", "I-PER"), ("。", "O")]
    padded = _write(tmp_path / "p.jsonl", [{"text": "  Paris!", "label": [[2, 7, "LOC"]]}])
    assert load_jsonl(padded, kind="ner")[0].tags == ["B-LOC", "O"]  # offsets count from the text as given
    bad = _write(tmp_path / "b.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(InputError, match=r"b\.jsonl:1: 2 tokens but 1 tags"):
        load_jsonl(bad, kind="ner")
    gz = tmp_path / "i.jsonl.gz"
    gz.write_bytes(gzip.compress(json.dumps({"q": "1+1?", "a": "2"}).encode() + b"\n"))
    inst = load_jsonl(gz, kind="instruction", prompt_field="q", response_field="a")
    assert (inst[0].prompt, inst[0].response) == ("1+1?", "2")


def test_load_csv_with_bom_tsv_and_clear_errors(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("\ufeffreview,sentiment\n\"很好，\n推荐\",pos\nbad,neg\n".encode())
    rows = load_csv(path, text_field="review", label_field="sentiment")
    assert [(e.text, e.label) for e in rows] == [("很好，\n推荐", "pos"), ("bad", "neg")]
    assert rows[1].meta["where"] == "r.csv:4"  # lines counted in the file, across the quoted newline
    with pytest.raises(InputError, match=r"r\.csv: no column 'text' \(columns: review, sentiment\); set text_field"):
        load_csv(path)
    path.write_text("text,label\na,pos\nb,neg,extra\n,neg\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"r\.csv:3: 3 fields, but the header has 2"):
        load_csv(path)
    assert [e.text for e in load_csv(path, on_error="skip")] == ["a"]
    path.write_bytes(b"text,label\nok,pos\n" + "坏,neg\n".encode("gbk"))
    with pytest.raises(InputError, match=r"r\.csv:3: not UTF-8"):
        load_csv(path)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("tokens\ttags\n张 三 来 了\tB-PER I-PER O O\n", encoding="utf-8")
    assert load_csv(tsv, kind="ner")[0].tags == ["B-PER", "I-PER", "O", "O"]


# --------------------------------------------------------------------------- records


def test_load_records_reads_the_last_stage_with_labels_in_meta(tmp_path):
    stage = tmp_path / "run" / "stages" / "02-label"
    records = [Record(id="a", text="好评", meta={"reviews": {"label": "pos"}, "split": "train"}),
               Record(id="b", text="dropped", meta={"drop_reason": "too_short"}),
               Record(id="c", text="差评", meta={"reviews": {"label": "neg"}})]
    write_parquet(stage / "shard-00000.parquet", records)
    (stage / "shard-00000.done").write_text("")
    write_parquet(tmp_path / "run" / "stages" / "01-clean" / "shard-00000.parquet", [Record(id="z", text="old")])
    with pytest.raises(InputError, match=r"02-label/shard-00000\.parquet:row 1 \(id a\): no meta\.label \(meta keys: reviews, split\)"):
        load_records(tmp_path / "run")
    with pytest.raises(InputError, match="no record shards"):
        load_records(tmp_path)
    rows = load_records(tmp_path / "run", label_field="reviews.label")
    assert [(e.text, e.label, e.meta["id"]) for e in rows] == [("好评", "pos", "a"), ("差评", "neg", "c")]
    assert rows[0].meta["split"] == "train"
    assert load_examples(stage, {"label_field": "reviews.label"})[1].label == "neg"


# --------------------------------------------------------------------------- Label Studio

def _task(i, text, results, cancelled=False, **extra):
    return {"id": i, "data": {"text": text}, "project": 1, "predictions": [],
            "annotations": [{"id": 100 + i, "was_cancelled": cancelled, "ground_truth": False,
                             "result": results, "task": i}], **extra}


def _choice(label, name="sentiment"):
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [label]}}


def _span(start, end, text, label):
    return {"from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": text, "labels": [label]}}


def test_label_studio_choices_in_chinese_and_english(tmp_path, caplog):
    export = [_task(1, "质量很好，物流也快", [_choice("Positive")]),
              _task(2, "The battery died after a day.", [_choice("Negative")]),
              _task(3, "skipped by the annotator", [], cancelled=True),
              {"id": 4, "data": {"text": "nobody looked"}, "annotations": []},
              _task(5, "two fields", [_choice("Positive"), _choice("Spam", name="spam")])]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InputError, match=r"export\.json:task 5 \(id 5\): several choice fields \(sentiment, spam\)"):
        load_label_studio(path)
    with caplog.at_level(logging.INFO):
        rows = load_label_studio(path, on_error="skip")
    assert [(e.text, e.label) for e in rows] == [("质量很好，物流也快", "Positive"),
                                                 ("The battery died after a day.", "Negative")]
    assert "1 cancelled" in caplog.text and "1 not annotated" in caplog.text
    assert [e.label for e in load_label_studio(path, from_name="spam", on_error="skip")] == ["Spam"]
    task = make_task("classification", load_examples(path, {"format": "label_studio", "on_error": "skip"}))
    assert task.labels == ["Negative", "Positive"]


def test_label_studio_spans_become_bio_tags(tmp_path):
    text_zh, text_en = "新华社记者在北京报道", "Angela Merkel visited Paris 🇫🇷 and Berlin."
    export = [_task(1, text_zh, [_span(0, 3, "新华社", "ORG"), _span(6, 8, "北京", "LOC")]),
              # offsets as the browser counts them: the flag is 4 UTF-16 units but 2 characters
              _task(2, text_en, [_span(0, 13, "Angela Merkel", "PER"), _span(22, 27, "Paris", "LOC"),
                                 _span(37, 43, "Berlin", "LOC")]),
              _task(3, "没有实体的句子", [])]
    path = tmp_path / "ner.json"
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    zh, en, empty = load_label_studio(path)  # kind found from the annotations
    assert zh.tokens == list(text_zh) and zh.tags == ["B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "B-LOC", "I-LOC", "O", "O"]
    assert [(t, g) for t, g in zip(en.tokens, en.tags, strict=True) if g != "O"] == \
        [("Angela", "B-PER"), ("Merkel", "I-PER"), ("Paris", "B-LOC"), ("Berlin", "B-LOC")]
    assert set(empty.tags) == {"O"}
    export[0]["annotations"][0]["result"][1]["value"]["text"] = "上海"
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InputError, match=r"ner\.json:task 1 \(id 1\): span 6-8 is '北京' in the text but '上海'"):
        load_label_studio(path, kind="ner")


def test_label_studio_format_errors(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[{"text": "a", "sentiment": "Positive"}]', encoding="utf-8")
    with pytest.raises(InputError, match="not a Label Studio JSON export"):
        load_label_studio(path)
    path.write_text('[\n{"id": 1,\n "data": }\n]', encoding="utf-8")
    with pytest.raises(InputError, match=r"x\.json:3: not valid JSON"):
        load_label_studio(path)


def test_load_examples_picks_the_format_from_the_name(tmp_path):
    jsonl = _write(tmp_path / "a.ndjson", [{"text": "t", "label": "l"}])
    assert load_examples(jsonl)[0].label == "l"
    assert load_examples(jsonl, kind="instruction", prompt_field="text", response_field="label")[0].response == "l"
    with pytest.raises(InputError, match="cannot tell the format"):
        load_examples(tmp_path / "a.txt")
    with pytest.raises(ConfigError, match="format: must be one of"):
        load_examples(jsonl, LoaderConfig.model_construct(format="xml").model_dump())
