"""URLs as inputs: datasets, eval files, tokenizers and models on S3 (moto's server on loopback), staged into
the user cache by `storage.local_copy` and read like local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge import storage
from lmforge.errors import ConfigError, InputError

BUCKET = "lmforge-inputs"
MITO = "Which of the following best describes the main function of the mitochondria in a eukaryotic cell?"
TEXTS = ["the river runs to the sea", "长江是中国最长的河流。", "models read tokens, not words"] * 20


@pytest.fixture()
def s3(empty_s3, tmp_path, monkeypatch):
    """An empty bucket (the s3_server fixture of conftest; a fresh s3fs client) and a user cache in tmp_path."""
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    return empty_s3(BUCKET)


def upload(client, local: Path, prefix: str) -> str:
    """Every file under `local` to s3://BUCKET/prefix/..., keeping the layout; the prefix URL."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_local_copy_keeps_the_layout_and_downloads_each_version_once(s3, tmp_path, downloads):
    local = tmp_path / "local"
    jsonl(local / "ds" / "train.jsonl", [{"text": "a"}])
    jsonl(local / "ds" / "sub" / "test.jsonl", [{"text": "b"}])
    (local / "ds" / "notes.txt").write_text("c", encoding="utf-8")
    upload(s3, local, "data")
    url = f"s3://{BUCKET}/data/ds"

    prefix, matched, one = (storage.local_copy(u, "input.x") for u in (url, f"{url}/**/*.jsonl", f"{url}/train.jsonl"))
    assert prefix.is_dir() and tree(prefix) == tree(local / "ds")
    assert matched.is_dir() and tree(matched) == {"train.jsonl": b'{"text": "a"}\n', "sub/test.jsonl": b'{"text": "b"}\n'}
    assert one.is_file() and one.name == "train.jsonl" and one.read_bytes() == b'{"text": "a"}\n'
    assert prefix.is_relative_to(tmp_path / "cache" / "remote") and len(downloads) == 3 + 2 + 1

    downloads.clear()
    assert [storage.local_copy(u, "input.x") for u in (url, f"{url}/**/*.jsonl", f"{url}/train.jsonl")] \
        == [prefix, matched, one]
    assert downloads == []

    s3.put_object(Bucket=BUCKET, Key="data/ds/train.jsonl", Body=b'{"text": "changed"}\n')
    again = storage.local_copy(url, "input.x")
    assert again != prefix and (again / "train.jsonl").read_bytes() == b'{"text": "changed"}\n'
    assert f"{BUCKET}/data/ds/train.jsonl" in downloads
    assert (prefix / "train.jsonl").read_bytes() == b'{"text": "a"}\n'  # the old copy is left as it was

    with pytest.raises(InputError, match=r"input\.x: .*s3://no-such-bucket/ds"):
        storage.local_copy("s3://no-such-bucket/ds", "input.x")


def test_a_dataset_on_s3_reads_like_the_same_folder_on_disk_with_ids_from_its_url(s3, tmp_path, monkeypatch):
    from lmforge.collect.dataset import DatasetConfig, iter_dataset

    ds = tmp_path / "local" / "ds"
    jsonl(ds / "train.jsonl", [{"text": f"训练文本 {i}"} for i in range(3)])
    jsonl(ds / "test.jsonl", [{"text": "test text", "id": "given-1"}, {"text": "more test text"}])
    pq.write_table(pa.table({"text": ["from parquet", "第二行"]}), ds / "extra.parquet")
    url = upload(s3, ds, "corpora/ds")

    local = list(iter_dataset(DatasetConfig(path=str(ds)), tmp_path))
    remote = list(iter_dataset(DatasetConfig(path=url), tmp_path))
    assert [r.text for r in remote] == [r.text for r in local] and len(remote) == 7
    assert {r.source for r in remote} == {"dataset:ds"}
    assert {r.url for r in remote} == {f"{url}/extra.parquet", f"{url}/test.jsonl", f"{url}/train.jsonl"}
    assert not any(str(tmp_path) in r.id or str(tmp_path) in r.url for r in remote)
    assert "given-1" in {r.id for r in remote}

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "other-cache"))  # someone else stages it
    assert [r.id for r in iter_dataset(DatasetConfig(path=url + "/"), tmp_path)] == [r.id for r in remote]
    assert [r.text for r in iter_dataset(DatasetConfig(path=url, split="test"), tmp_path)] \
        == ["test text", "more test text"]
    with pytest.raises(InputError, match=r"input\.dataset\.path: .*s3://lmforge-inputs/nothing"):
        list(iter_dataset(DatasetConfig(path=f"s3://{BUCKET}/nothing"), tmp_path))


def test_eval_files_on_s3_decontaminate_like_local_ones(s3, tmp_path):
    from lmforge.dedup.decontaminate import Decontaminate
    from lmforge.pipeline import run_chain
    from lmforge.records import Record

    evals = tmp_path / "evals"
    jsonl(evals / "mmlu.jsonl", [{"question": MITO, "answer": "It produces most of the cell's chemical energy."}])
    jsonl(evals / "other.jsonl", [{"question": "What is the capital city of the French Republic, seat of its "
                                               "government?"}])
    (evals / "notes.txt").write_text("a note that is not an eval file and does not match the glob\n", encoding="utf-8")
    upload(s3, evals, "evals")
    pattern = f"s3://{BUCKET}/evals/*.jsonl"
    stage = Decontaminate(eval_files=[pattern], text_field="question")
    assert stage.config.eval_files == [pattern]

    texts = [f"Quiz: {MITO} Answer: energy.", "A document about rivers and seas, with nothing from any benchmark."]
    dropped: list[Record] = []
    out, stats = run_chain([stage], [Record(id=f"d{i}", text=t) for i, t in enumerate(texts)], dropped.append)
    assert [r.id for r in out] == ["d1"] and [r.id for r in dropped] == ["d0"]
    assert dropped[0].meta["decontaminate"]["eval_files"] == ["mmlu.jsonl"]
    assert stats[0].counters["eval:mmlu.jsonl"] == 1

    with pytest.raises(ConfigError, match=r"decontaminate\.eval_files: .*s3://no-such-bucket/evals"):
        Decontaminate(eval_files=["s3://no-such-bucket/evals/*.jsonl"])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    return train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("t") / "tokenizer")


def test_a_tokenizer_on_s3_loads_and_encodes_like_the_local_one(s3, tok_dir):
    from lmforge.tokenize.bpe import load_tokenizer

    url = upload(s3, tok_dir, "tok")
    for text in ("长江是中国最长的河流。", "models read tokens, not words"):
        assert load_tokenizer(url).encode(text).ids == load_tokenizer(tok_dir).encode(text).ids
    assert load_tokenizer(f"{url}/tokenizer.json").get_vocab() == load_tokenizer(tok_dir).get_vocab()
    with pytest.raises(InputError, match=r"^tokenizer: .*s3://lmforge-inputs/none"):
        load_tokenizer(f"s3://{BUCKET}/none")


def test_a_run_on_s3_resolves_to_its_staged_checkpoint_and_tokenizer(s3, tmp_path, tok_dir, lmforge_cli):
    import shutil

    import torch

    from lmforge.models.checkpoint_io import save_checkpoint
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.source import SourceKind, load_causal_lm, resolve_source

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16))
    run = tmp_path / "run"
    save_checkpoint(model, model.config, run / "pretrain" / "checkpoint")
    shutil.copytree(tok_dir, run / "tokenizer")
    url = upload(s3, run, "runs/run")

    source = resolve_source(url)
    assert source.kind is SourceKind.CHECKPOINT and source.path.is_relative_to(tmp_path / "cache")
    assert source.path.parts[-3:] == ("run", "pretrain", "checkpoint")
    assert source.tokenizer == source.path.parent.parent / "tokenizer" and (source.tokenizer / "tokenizer.json").is_file()
    torch.testing.assert_close(load_causal_lm(source, "cpu").lm_head.weight, model.lm_head.weight)

    tok_url = upload(s3, tok_dir, "tok")
    given = resolve_source(f"{url}/pretrain/checkpoint", tokenizer=tok_url)
    assert given.tokenizer is not None and tree(given.tokenizer) == tree(tok_dir)
    with pytest.raises(InputError, match=r"^model: .*s3://no-such-bucket/run"):
        resolve_source("s3://no-such-bucket/run")

    # the commands that take a MODEL folder take its URL: the same greedy text as from the local run
    greedy = ("--temperature", "0", "--max-new-tokens", "6", "--device", "cpu")
    from_store = lmforge_cli("generate", url, "the river", *greedy)
    from_disk = lmforge_cli("generate", str(run), "the river", *greedy)
    assert from_store.returncode == 0, from_store.stderr
    text = [r.stdout + r.stderr for r in (from_store, from_disk)]
    assert text[0].splitlines()[-3:] == text[1].splitlines()[-3:] and "the river" in text[0]
    missing = lmforge_cli("generate", "s3://no-such-bucket/run", "x")
    assert missing.returncode == 2 and "MODEL: cannot read s3://no-such-bucket/run" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
