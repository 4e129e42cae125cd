"""Tables the CLI prints after a run: the data funnel and the training figures."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lmforge.cli.console import out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title="data pipeline", title_justify="left")
    stages = stats.get("stages", [])
    with_counters = any(st.get("counters") for st in stages)
    cols = ("stage", "in", "out", "dropped by reason", "MB out", "s") + (("counted",) if with_counters else ())
    for col in cols:
        table.add_column(col, justify="left" if col in ("stage", "dropped by reason", "counted") else "right")
    for st in stages:
        reasons = "\n".join(f"{k} {v}" for k, v in st["dropped"].items()) or "-"
        row = [st["name"], str(st["in"]), str(st["out"]), reasons, _mb(st["bytes_out"]), f"{st['seconds']:.2f}"]
        if with_counters:
            row.append("\n".join(f"{k} {v}" for k, v in st.get("counters", {}).items()) or "-")
        table.add_row(*row)
    t = stats.get("totals", {})
    table.caption = f"records in {t.get('records_in', 0)}, written {t.get('records_out', 0)}, dropped {sum(t.get('dropped', {}).values())}"
    return table


def loss_table(losses: list[list[float]], rows: int = 8) -> Table:
    table = Table(title="pretraining loss", title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("loss", justify="right")
    if losses:
        stride = max(1, len(losses) // rows)
        picked = losses[::stride]
        if picked[-1] != losses[-1]:
            picked.append(losses[-1])
        for step, loss in picked:
            table.add_row(str(int(step)), f"{loss:.3f}")
    return table


def print_run_summary(result) -> None:
    out.print(stats_table(result.stats))
    steps = result.steps
    if "tokens" in steps:
        t = steps["tokens"]
        out.print(f"tokens: train {t['train_tokens']:,}  val {t['val_tokens']:,}  "
                  f"({t['chars_per_token']} characters per token)")
    if "pretrain" in steps:
        p = steps["pretrain"]
        out.print(loss_table(p["losses"]))
        speed = f"({p['steps']} steps, {p['tokens_per_second']:,.0f} tokens/s, {p['seconds']:.0f} s)"
        if "val_ppl_before" in p:
            out.print(f"held-out perplexity: before training [bold]{p['val_ppl_before']:.1f}[/] -> "
                      f"after [bold green]{p['val_ppl_after']:.1f}[/]   {speed}")
        else:  # BERT: one loss per objective (mlm, nsp)
            terms = ", ".join(f"{k} {p['val_before'][k]:.3f} -> {v:.3f}" for k, v in p["val_after"].items())
            out.print(f"held-out losses: {terms}   {speed}")
    if "generate" in steps:
        table = Table(title="samples", title_justify="left", show_lines=True)
        table.add_column("prompt")
        table.add_column("completion")
        for s in steps["generate"]["samples"]:
            table.add_row(s["prompt"], s["completion"])
        out.print(table)
    if getattr(result, "store", None):
        out.print(f"run: {result.store}  (its local mirror: {result.run_dir}; lmforge stats {result.run_dir})")
    else:
        out.print(f"run directory: {result.run_dir}  (lmforge stats {result.run_dir})")
    if getattr(result, "report", None) is not None:
        out.print(f"report: {result.report}  (open it in a browser; works offline)")


def _pair(scores: dict[str, Any], metric: str) -> str:
    a, b = ((scores.get(k) or {}).get("test", {}).get(metric) for k in ("pretrained", "scratch"))
    return "-" if a is None or b is None else f"{metric} {a:.3f} pretrained vs {b:.3f} scratch"


def _sec(seconds: dict[str, float], step: str) -> str:
    return f"{seconds[step]:.0f}" if step in seconds else ""


def demo_table(result) -> Table:
    """One row per demo step: what it made and its headline figure."""
    table = Table(title="lmforge demo", title_justify="left")
    for col in ("step", "result", "s"):
        table.add_column(col, justify="right" if col == "s" else "left")
    sec = result.seconds
    crawl = result.crawl
    table.add_row("crawl", f"{crawl.get('pages', 0)} pages from the loopback site; quarantined "
                  f"{crawl.get('quarantined', {})}; robots.txt honoured: {crawl.get('robots_honoured')}",
                  _sec(sec, "crawl"))
    totals = result.stats.get("totals", {})
    table.add_row("clean + dedup", f"{totals.get('records_in', 0):,} records in, {totals.get('records_out', 0):,} "
                  f"kept, {sum(totals.get('dropped', {}).values()):,} quarantined with reasons", "")
    gpt = result.steps.get("pretrain", {})
    if gpt:
        table.add_row("GPT", f"{gpt.get('steps')} steps; held-out perplexity {gpt.get('val_ppl_before', 0):.0f} -> "
                      f"{gpt.get('val_ppl_after', 0):.1f}", _sec(sec, "data"))
    bert = result.bert.steps.get("pretrain", {}) if result.bert is not None else {}
    if bert:
        terms = ", ".join(f"{k} {bert['val_before'][k]:.2f} -> {v:.2f}" for k, v in bert.get("val_after", {}).items())
        table.add_row("BERT", f"{bert.get('steps')} steps; held-out {terms}", _sec(sec, "bert"))
    aug = result.augment
    if aug:
        table.add_row("augment", f"EDA: {aug.get('copies')} copies of {aug.get('train')} training reviews "
                      f"(val {aug.get('val')}, test {aug.get('test')} untouched)", _sec(sec, "augment"))
    ft = result.finetunes
    if "sentiment" in ft:
        table.add_row("sentiment", _pair(ft["sentiment"], "accuracy"), _sec(sec, "sentiment"))
    if "ner" in ft:
        table.add_row("NER", _pair(ft["ner"], "f1"), _sec(sec, "ner"))
    table.caption = "s: seconds in this invocation (a resumed step shows none)"
    return table
