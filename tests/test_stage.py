"""What every stage does around its work: one-line errors, TensorFlow's harmless error-level line filtered."""

import subprocess
import sys

SCRIPT = """
import os, sys
from transferkit import stage
from transferkit.errors import TransferkitError

def main():
    os.write(2, b"E0000 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool which is not in\\n")
    os.write(2, b"E0000 some_kernel.cc:1] a real error\\n")
    raise TransferkitError("boom")

stage.run_script(main, "demo")
"""


def test_the_harmless_tensorflow_line_is_dropped_and_real_errors_are_kept():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "use_unbounded_threadpool" not in out.stderr
    assert "a real error" in out.stderr and out.stderr.rstrip().endswith("demo: error: boom")
