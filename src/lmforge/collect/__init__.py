"""Collection: one module per source, each turning a source into records with provenance.

The contract every source follows (so recipes, `lmforge collect` and the ingest step treat
them alike):

- a config class `<Name>Config(StrictModel)` holding everything the source needs;
- a generator `iter_<name>(config, base_dir: Path, work_dir: Path) -> Iterator[Record]`,
  where `base_dir` resolves relative paths (the recipe's folder) and `work_dir` is a folder
  inside the run directory the source may keep state in (a crawl frontier, WARC files);
- the same config and source give the same records in the same order, so a resumed ingest
  can skip the shards it already wrote;
- provenance holds what is known: `fetched_at` (ISO 8601 UTC), `content_type`, `encoding`,
  `license`, and `http_status` for web sources;
- a bad item never raises: it is yielded as a record whose `meta["drop_reason"]` is set
  (and `meta["drop_stage"] = "input"`), which ingest writes to quarantine; only a source
  that cannot be read at all raises `InputError` naming it.
"""
