"""recipes/commoncrawl-warc-ray.yaml as shipped, on a small WARC of real text, on a local Ray, ending in a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "commoncrawl-warc-ray.yaml"
NAV = "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"


def page(title: str, paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<html><head><title>{title}</title></head><body>{NAV}<article><h1>{title}</h1>{body}</article>"
            "<footer>Copyright 2024. All rights reserved.</footer></body></html>").encode()


def write_crawl(make_warc, path: Path) -> list[str]:
    """Pages made of built-in Chinese news and English docs paragraphs, with what a crawl also holds:
    a verbatim copy, a 404, an image, a blocked domain and a page in another language. Returns the URLs."""
    from lmforge.collect.builtin import corpus_records

    zh = [r.text for r in corpus_records("peoples_daily", 300) if len(r.text) > 80]
    en = [r.text for r in corpus_records("python_docs", 300) if len(r.text) > 200]
    items = [(f"https://news.example.cn/{i}", page(f"新闻 {i}", zh[6 * i: 6 * i + 6]), "text/html", "200 OK")
             for i in range(12)]
    items += [(f"https://docs.example.org/{i}", page(f"Docs {i}", en[6 * i: 6 * i + 6]), "text/html", "200 OK")
              for i in range(12)]
    items += [
        ("https://mirror.example.net/0", items[0][1], "text/html", "200 OK"),  # the same page again
        ("https://docs.example.org/missing", b"<p>not found</p>", "text/html", "404 Not Found"),
        ("https://docs.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", "200 OK"),
        ("https://spam.example.com/0", items[13][1], "text/html", "200 OK"),
        ("https://de.example.de/0", page("Nachrichten", [
            "Die Bundesregierung hat am Mittwoch neue Maßnahmen zur Förderung der Wirtschaft beschlossen. "
            "Die Minister betonten, dass die Unternehmen schnell unterstützt werden sollen, damit die Arbeitsplätze "
            "in den betroffenen Regionen erhalten bleiben und die Investitionen wieder steigen."] * 2),
         "text/html", "200 OK"),
    ]
    make_warc(path, items)
    return [url for url, *_ in items]


@pytest.mark.usefixtures("local_ray")
def test_commoncrawl_recipe_runs_on_ray_and_reports(tmp_path, make_warc):
    import pyarrow.parquet as pq

    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe
    from lmforge.pipeline.runner import iter_output

    (tmp_path / "warc").mkdir()
    urls = write_crawl(make_warc, tmp_path / "warc" / "crawl-00000.warc.gz")
    data = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    assert data["executor"]["kind"] == "ray"
    data["input"]["shard_size"] = 8  # several Ray tasks for a small crawl
    data["pipeline"][0]["url_blocklist"] = {"extra_domains": ["spam.example.com"]}
    data["tokenizer"]["vocab_size"] = 400  # a small crawl
    data["tokens"]["val_percent"] = 25  # so that a few documents are held out
    result = run_recipe(parse_recipe(data, where=str(RECIPE)), tmp_path / "run", base_dir=tmp_path)

    dropped = result.stats["totals"]["dropped"]
    for reason in ("http_404", "content_type", "url_blocklist", "lang_de", "exact_duplicate"):
        assert dropped[reason] == 1, reason
    kept = [r.url for r in iter_output(result.output_dir)]
    quarantined = [u for p in sorted((tmp_path / "run" / "stages").glob("*/quarantine-*.parquet"))
                   for u in pq.read_table(p, columns=["url"]).column("url").to_pylist()]
    assert sorted(kept + quarantined) == sorted(urls)  # every response kept or quarantined, exactly once
    assert {u for u in kept if "news.example.cn" in u} == {f"https://news.example.cn/{i}" for i in range(12)}
    manifest = json.loads((tmp_path / "run" / "tokens" / "train" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["documents"] + json.loads((tmp_path / "run" / "tokens" / "val" / "manifest.json").read_text(
        encoding="utf-8"))["documents"] == len(kept)  # every kept document was encoded, once
    page_html = result.report.read_text(encoding="utf-8")
    assert "Data funnel: records kept after each stage" in page_html and "lang_de" in page_html
