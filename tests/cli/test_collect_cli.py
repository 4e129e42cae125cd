import json

from lmforge.cli.main import main


def test_collect_files_with_set_options(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_bytes("第一段，GBK 编码。\n\n第二段。".encode("gbk"))
    (d / "rows.csv").write_text("body,id\nfrom csv,7\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["collect", "files", str(d / "a.txt"), str(d / "rows.csv"), "--out", str(out),
            "--set", "text_split=paragraph", "--set", "text_field=body", "--shard-size", "2"]
    assert main(args) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["records_out"] == 3 and stats["stages"][0]["shards"] == 2
    assert "config.yaml" in {p.name for p in out.iterdir()}
    assert main(["collect", "files", str(d), "--out", str(tmp_path / "r2"), "--set", "recursive=maybe"]) == 2
    err = capsys.readouterr().err
    assert "input.files.recursive" in err
