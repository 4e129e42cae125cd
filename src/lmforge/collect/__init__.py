"""Collection: one module per source, each turning a source into records with provenance.

Each source is a `lmforge.pipeline.Source` subclass (`<Name>Source`, with its `<Name>Config`)
registered in `lmforge.pipeline.registry`; the contract every source follows is written in
`lmforge.pipeline.source`. Each module also keeps its generator `iter_<name>(config, base_dir,
work_dir)` for library use: `base_dir` resolves relative paths (the recipe's folder) and `work_dir`
is a folder inside the run directory the source may keep state in (a crawl frontier, WARC files).
"""
