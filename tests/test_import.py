import subprocess
import sys


def test_import_is_fast_and_light():
    code = (
        "import sys, time; t = time.perf_counter(); import lmforge, lmforge.records, lmforge.pipeline; "
        "dt = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'tokenizers', 'ray', 'pyarrow', 'numpy') if m in sys.modules]; "
        "print(dt, ','.join(heavy))"
    )
    best = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[0])
        for _ in range(3)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == [], f"heavy modules imported at top level: {out[1:]}"
    assert best < 0.3, f"import lmforge took {best:.3f}s"


def test_cli_help_does_not_import_torch():
    code = ("import sys; from lmforge.cli import main; "
            "print(','.join(m for m in ('torch', 'tokenizers', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
