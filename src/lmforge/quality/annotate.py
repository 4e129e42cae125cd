"""`annotate`: a model rates a seeded sample of documents, the ratings train a fast quality classifier.

Any OpenAI-compatible endpoint answers (`lmforge serve`, vLLM, a hosted API). The sample is the
`sample` documents whose hash of (seed, id) is smallest: the same documents in any input order, and
a larger sample contains the smaller one, so growing it only pays for the new documents. Every
answer is cached (`quality.answers`) before it is parsed, so a re-run, a killed run or a run with a
better parser never pays twice.

Output, a stage-like directory that `lmforge quality train` and `tasks.load_records` read:

```
OUT/
  shard-00000.parquet       # rated documents, meta.annotation = {score, answer, model, template}
  quarantine-00000.parquet  # annotate_unparsable (answer kept) and annotate_http_error (not cached)
  shard-00000.done          # the shard's stage stats
  annotate.json             # the run's figures: requests, cached, parsed, unparsable, scores, ...
  cache/answers-*.parquet   # every answer, keyed by request
```
The API key is read from the environment variable `api_key_env` and goes nowhere but the request
header: not the config, the logs, the cache or the output.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmforge import progress
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError, UserError
from lmforge.pipeline.shards import quarantine_path, shard_path, write_outputs
from lmforge.pipeline.stage import StageStats
from lmforge.pipeline.step import Step, StepContext, Summary
from lmforge.quality.answers import AnswerCache
from lmforge.quality.client import Asker, Outcome, Settings
from lmforge.quality.rubrics import AUTO, Template, TemplateChooser, parse_score
from lmforge.records import Record, read_jsonl, read_parquet, text_bytes, write_json_atomic

log = logging.getLogger(__name__)

NAME = "annotate"
ANSWER_CHARS = 2000  # of each answer kept in meta.annotation (the cache keeps it whole)
OUTPUT_SHARD = 10_000  # documents per output shard
STATS_FILE = "annotate.json"
OWNED_FIELDS = ("model", "messages", "prompt", "max_tokens", "temperature", "stream", "n")


class AnnotateConfig(StrictModel):
    """The `annotate:` section and `lmforge quality annotate`: which model rates what, and how politely."""

    input: str | None = Field(None, description="documents to rate: run or stage directory, .parquet or .jsonl "
                                                "file [default in a recipe: the pipeline's output]")
    url: str = Field(description="base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(min_length=1, description="the model name the endpoint expects")
    api_key_env: str = Field("LMFORGE_ANNOTATE_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="environment variable holding the API key (the key itself is never "
                                         "written anywhere); unset: no key is sent")
    endpoint: Literal["chat", "completions"] = "chat"
    template: str = Field(AUTO, description="edu_en, edu_zh, auto (edu_zh for Chinese documents, else edu_en) "
                                            "or a template file with a {text} placeholder")
    sample: int | None = Field(1000, ge=1, description="documents to rate, a seeded sample; null: all")
    seed: int = 0
    max_chars: int = Field(4000, ge=1, description="each document is cut to this many characters in the prompt")
    max_tokens: int | None = Field(256, ge=1, description="answer length; null: not sent (e.g. to send "
                                                          "max_completion_tokens in extra_body)")
    temperature: float = Field(0.0, ge=0, le=2)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="more request fields: logit_bias, "
                                                                         "top_p, seed, ...")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight")
    requests_per_second: float | None = Field(None, gt=0, description="request starts per second; null: no limit")
    retries: int = Field(4, ge=0, le=20, description="retries of a connection error, timeout, 429 or 5xx")
    backoff: float = Field(1.0, ge=0, le=600, description="seconds before the first retry, doubled each time")
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    budget_seconds: float | None = Field(None, gt=0, description="no request starts after this many seconds")
    max_requests: int | None = Field(None, ge=1, description="requests to send at most, retries included")
    min_score: int = 0
    max_score: int = 5

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL like http://127.0.0.1:8000/v1 (got {url[:80]!r})")
        return url.rstrip("/")

    @field_validator("extra_body")
    @classmethod
    def _not_owned(cls, body: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(body) & set(OWNED_FIELDS))
        if owned:
            raise ValueError(f"{', '.join(owned)} cannot be set here: they come from the config's own fields")
        return body

    @model_validator(mode="after")
    def _scale(self) -> AnnotateConfig:
        if self.min_score >= self.max_score:
            raise ValueError(f"min_score ({self.min_score}) must be below max_score ({self.max_score})")
        return self

    def endpoint_url(self) -> str:
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        return self.url if self.url.endswith(path) else self.url + path

    def body(self, prompt: str) -> dict[str, Any]:
        """The request JSON for one prompt."""
        body: dict[str, Any] = {**self.extra_body, "model": self.model, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body


@dataclass
class Job:
    record: Record
    template: Template
    key: str


@dataclass
class AnnotateResult:
    out_dir: Path
    stats: dict[str, Any]
    records: list[Record] = field(default_factory=list)  # rated documents, in sample order

    @property
    def complete(self) -> bool:
        return bool(self.stats["complete"])


# --------------------------------------------------------------------------- input and sample


def read_input(path: str | Path) -> Iterator[Record]:
    """Records from a run directory (its final stage), a stage directory, or a .parquet/.jsonl file."""
    from lmforge.pipeline.runner import iter_output
    from lmforge.tokenize.shards import records_dir

    p = Path(path)
    if p.is_dir():
        return iter_output(records_dir(p))
    if not p.is_file():
        raise InputError(f"input: {p} does not exist (give a run directory, a stage directory, or a .parquet "
                         "or .jsonl file)")
    if p.suffix == ".parquet":
        return read_parquet(p)
    if p.name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(p)
    raise InputError(f"input: {p} is not a .parquet or .jsonl file")


def _rank(seed: int, record_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{record_id}".encode(), digest_size=8).digest(), "big")


def sample_records(records: Iterable[Record], n: int | None, seed: int) -> list[Record]:
    """The n documents of smallest rank (quarantined and empty ones skipped), in rank order."""
    heap: list[tuple[int, int, Record]] = []  # (-rank, arrival, record): the root is the worst kept
    for i, record in enumerate(records):
        if record.drop_reason or not record.text.strip():
            continue
        item = (-_rank(seed, record.id), i, record)
        if n is None or len(heap) < n:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    return [record for _, _, record in sorted(heap, key=lambda t: (-t[0], t[1]))]


def cache_key(config: AnnotateConfig, template: Template, record: Record) -> str:
    """Everything that shapes an answer: the request settings, the template and the document."""
    request = {"endpoint": config.endpoint, "model": config.model, "template": template.text,
               "max_chars": config.max_chars, "max_tokens": config.max_tokens, "temperature": config.temperature,
               "extra_body": config.extra_body}
    text_hash = hashlib.sha256(record.text.encode("utf-8", "surrogatepass")).hexdigest()
    payload = json.dumps([request, record.id, text_hash], sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- the run


def annotate(config: AnnotateConfig, data: str | Path | Iterable[Record], out_dir: str | Path,
             base_dir: str | Path = ".") -> AnnotateResult:
    """Rate a sample of `data` with the model (only answers not cached yet are asked); write OUT."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, data)
    t0 = time.perf_counter()
    choose = TemplateChooser(config.template, Path(base_dir))
    records = read_input(data) if isinstance(data, (str, Path)) else data
    jobs = [Job(r, template, cache_key(config, template, r))
            for r in sample_records(records, config.sample, config.seed) for template in [choose(r)]]
    cache = AnswerCache(out_dir / "cache")
    todo = list({job.key: job for job in jobs if job.key not in cache}.values())  # a duplicate is asked once
    stats: dict[str, Any] = {"model": config.model, "endpoint": config.endpoint, "sampled": len(jobs),
                             "cached": sum(job.key in cache for job in jobs)}
    log.info("annotate: %d documents sampled, %d answers cached, %d to ask %s at %s", len(jobs),
             stats["cached"], len(todo), config.model, config.url)
    failures = _ask(config, todo, cache, stats)
    result = _write_output(config, jobs, cache, failures, out_dir, stats)
    result.stats["seconds"] = round(time.perf_counter() - t0, 3)
    write_json_atomic(out_dir / STATS_FILE, result.stats)
    log.info("annotate: %s", ", ".join(f"{k} {v}" for k, v in result.stats.items() if not isinstance(v, dict)))
    return result


def _ask(config: AnnotateConfig, todo: list[Job], cache: AnswerCache, stats: dict[str, Any]) -> dict[str, Outcome]:
    """Send `todo`, caching each answer as it comes; returns the final failures by key, counts into `stats`."""
    failures: dict[str, Outcome] = {}
    answered = 0
    asker = Asker(_settings(config), config.body)
    with progress.task(f"annotate: {config.model}", total=stats["cached"] + len(todo)) as bar:
        bar.advance(stats["cached"])

        def on_outcome(job: Job, outcome: Outcome) -> None:
            nonlocal answered
            if outcome.answer is not None:
                answered += 1
                cache.add(job.key, outcome.answer, job.record.id, config.model, job.template.name)
            elif outcome.error is not None:
                failures[job.key] = outcome
            bar.advance()

        prompts = ((job, job.template.render(job.record.text[:config.max_chars])) for job in todo)
        try:
            _run_async(asker.ask_all(prompts, on_outcome))
        finally:
            cache.compact()  # flushes first: whatever was answered is kept, even on Ctrl-C
    stats.update(requests=asker.budget.sent, retries=asker.budget.retries, answered=answered)
    return failures


def _settings(config: AnnotateConfig) -> Settings:
    key = os.environ.get(config.api_key_env, "").strip() or None
    if key is None:
        log.info("annotate: $%s is not set; sending requests without an API key", config.api_key_env)
    return Settings(url=config.endpoint_url(), chat=config.endpoint == "chat", key=key,
                    concurrency=config.concurrency, requests_per_second=config.requests_per_second,
                    retries=config.retries, backoff=config.backoff, timeout=config.timeout,
                    budget_seconds=config.budget_seconds, max_requests=config.max_requests)


def _run_async(coroutine: Any) -> Any:
    """asyncio.run, also from code already inside an event loop (a notebook): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _check_out_dir(out_dir: Path, data: Any) -> None:
    """Refuse to overwrite record shards that another step wrote (OUT is rewritten on every run)."""
    if isinstance(data, (str, Path)) and Path(data).resolve() == out_dir.resolve():
        raise ConfigError(f"out: {out_dir} is also the input; write the annotations to another directory")
    if any(out_dir.glob("shard-*.done")) and not (out_dir / STATS_FILE).is_file():
        raise ConfigError(f"out: {out_dir} holds record shards that annotate did not write; choose another directory")


# --------------------------------------------------------------------------- output


def _verdict(config: AnnotateConfig, job: Job, cache: AnswerCache, failures: dict[str, Outcome]) -> str | None:
    """Set meta.annotation on the job's record; returns the drop reason, "" when rated, None when not asked."""
    meta = {"model": config.model, "template": job.template.name}
    answer = cache.get(job.key)
    if answer is not None:
        parsed = parse_score(answer, config.min_score, config.max_score)
        job.record.meta["annotation"] = {"score": parsed.score, "answer": answer[:ANSWER_CHARS], **meta,
                                         **({"problem": parsed.problem} if parsed.problem else {})}
        return "" if parsed.ok else "annotate_unparsable"
    failure = failures.get(job.key)
    if failure is None:
        return None
    job.record.meta["annotation"] = {"error": failure.error, "status": failure.status,
                                     "attempts": failure.attempts, **meta}
    return "annotate_http_error"


def _write_output(config: AnnotateConfig, jobs: list[Job], cache: AnswerCache, failures: dict[str, Outcome],
                  out_dir: Path, stats: dict[str, Any]) -> AnnotateResult:
    """Rated documents and quarantine as shards of the sample order; stale shards of a bigger run removed."""
    totals = StageStats(NAME)
    rated: list[Record] = []
    problems: Counter = Counter()
    n_shards = 0
    for start in range(0, len(jobs), OUTPUT_SHARD):
        kept, quarantined, shard = _shard(config, jobs[start:start + OUTPUT_SHARD], cache, failures)
        write_outputs(out_dir, f"{n_shards:05d}", kept, quarantined, [shard])
        problems.update(r.meta["annotation"]["problem"] for r in quarantined if "problem" in r.meta["annotation"])
        rated += kept
        totals.merge(shard)
        n_shards += 1
    _remove_stale_shards(out_dir, n_shards)
    dropped = totals.dropped
    remaining = len(jobs) - len(rated) - sum(dropped.values())
    stats.update({"parsed": len(rated), "unparsable": dropped["annotate_unparsable"],
                  "http_errors": dropped["annotate_http_error"], "remaining": remaining, "complete": remaining == 0,
                  "scores": {str(s): totals.counters[f"score_{s}"] for s in range(config.min_score,
                                                                                   config.max_score + 1)},
                  "unparsable_by_problem": dict(sorted(problems.items())),
                  "templates": dict(Counter(j.template.name for j in jobs)), "shards": n_shards})
    return AnnotateResult(out_dir, stats, rated)


def _shard(config: AnnotateConfig, chunk: list[Job], cache: AnswerCache,
           failures: dict[str, Outcome]) -> tuple[list[Record], list[Record], StageStats]:
    """One output shard: (rated, quarantined, its stage stats with a score_N counter per score)."""
    t0 = time.perf_counter()
    stats = StageStats(NAME, records_in=len(chunk), bytes_in=sum(text_bytes(j.record) for j in chunk))
    kept, quarantined = [], []
    for job in chunk:
        reason = _verdict(config, job, cache, failures)
        if reason == "":
            kept.append(job.record)
            stats.counters[f"score_{job.record.meta['annotation']['score']}"] += 1
        elif reason is not None:
            job.record.meta.update(drop_reason=reason, drop_stage=NAME)
            quarantined.append(job.record)
            stats.dropped[reason] += 1
    stats.records_out, stats.bytes_out = len(kept), sum(text_bytes(r) for r in kept)
    stats.seconds = time.perf_counter() - t0
    return kept, quarantined, stats


def _remove_stale_shards(out_dir: Path, keep: int) -> None:
    for done in out_dir.glob("shard-*.done"):
        shard_id = done.name[len("shard-"):-len(".done")]
        if shard_id.isdigit() and int(shard_id) >= keep:
            done.unlink()
            shard_path(out_dir, shard_id).unlink(missing_ok=True)
            quarantine_path(out_dir, shard_id).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the recipe step


class AnnotateStep(Step):
    """RUN/annotate: the pipeline's output (or `input`) rated by a model; stops the run if the budget ran out."""

    name = NAME
    Config = AnnotateConfig

    def reads(self) -> list[str]:
        return ["stages"] if self.config.input is None else []

    def writes(self) -> list[str]:
        return [NAME]

    def run(self, ctx: StepContext) -> Summary:
        cfg = self.config
        data = ctx.base_dir / cfg.input if cfg.input is not None else ctx.path(ctx.summary("pipeline")["output"])
        result = annotate(cfg, data, ctx.path(NAME), base_dir=ctx.base_dir)
        if not result.complete:
            raise UserError(f"annotate: the budget ran out with {result.stats['remaining']} of "
                            f"{result.stats['sampled']} documents not rated; their answers so far are cached in "
                            f"{ctx.path(NAME) / 'cache'}, so running the same recipe again continues from there")
        return {"output": NAME, **{k: v for k, v in result.stats.items() if k != "model"}}

