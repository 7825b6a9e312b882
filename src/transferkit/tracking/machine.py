"""What a run ran on, as MLflow tags: the CPU, its instruction set, the versions of the numeric libraries.

Same data and params give the same bits only on the same CPU instruction set with the same library
versions: oneDNN (TensorFlow) and XNNPACK (LiteRT) pick their kernels by instruction set, and each
kernel adds floats in its own order. These tags say why two runs differ. Cheap by design: no
TensorFlow import (versions come from the installed packages' metadata), one read of /proc/cpuinfo.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata

from transferkit.seeding import intra_op_threads

_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
_AMX = {"amx_tile", "amx_int8", "amx_bf16"}
# x86 instruction sets by oneDNN's names (the values ONEDNN_MAX_CPU_ISA takes), highest first, each with
# the /proc/cpuinfo flags it needs. XNNPACK draws its lines in about the same places.
X86_ISAS = (
    ("avx512_core_amx_fp16", _AVX512 | _AMX | {"avx512_fp16", "amx_fp16"}),
    ("avx512_core_amx", _AVX512 | _AMX | {"avx512_fp16", "avx512_bf16", "avx512_vnni"}),
    ("avx512_core_fp16", _AVX512 | {"avx512_fp16", "avx512_bf16", "avx512_vnni"}),
    ("avx512_core_bf16", _AVX512 | {"avx512_bf16", "avx512_vnni"}),
    ("avx512_core_vnni", _AVX512 | {"avx512_vnni"}),
    ("avx512_core", _AVX512),
    ("avx2_vnni_2", {"avx2", "avx_vnni", "avx_vnni_int8", "avx_ne_convert"}),
    ("avx2_vnni", {"avx2", "avx_vnni"}),
    ("avx2", {"avx2", "fma"}),
    ("avx", {"avx"}),
    ("sse41", {"sse4_1"}),
)
ARM_ISAS = (("sve2", {"sve2"}), ("sve", {"sve"}), ("neon", {"asimd"}))  # Linux /proc/cpuinfo "Features"
TENSORFLOW_DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow", "tensorflow-macos", "tensorflow-intel", "tf-nightly")


def isa_of(flags: set[str], machine: str) -> str:
    """The highest instruction set the flags show, by oneDNN's names on x86; else the machine type."""
    for name, needs in X86_ISAS + ARM_ISAS:
        if needs <= flags:
            return name
    return machine.lower() or "unknown"


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """(model name, feature flags) of the first processor listed in /proc/cpuinfo."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags or set()


def _darwin_brand() -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


@lru_cache(maxsize=1)
def cpu() -> tuple[str, str]:
    """(CPU model, highest instruction set) of this machine."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:  # not Linux
        if platform.system() == "Darwin":
            model = _darwin_brand()
    return model or platform.processor() or platform.machine() or "unknown", isa_of(flags, platform.machine())


def version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def onednn_setting(machine: str | None = None) -> str:
    """TensorFlow's oneDNN kernels (TF_ENABLE_ONEDNN_OPTS): on or off, and any cap on their ISA.

    TensorFlow does not expose oneDNN's version; it comes with the TensorFlow version (2.21: oneDNN 3.7)."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    x86 = (machine or platform.machine()).lower() in ("x86_64", "amd64")
    default = "on (default)" if x86 else "default"  # elsewhere TensorFlow decides by CPU
    setting = {"0": "off", "false": "off", "1": "on", "true": "on"}.get(value, default)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    return f"{setting}, max ISA {cap.lower()}" if cap and setting != "off" else setting


def machine_tags() -> dict[str, str]:
    model, isa = cpu()
    return {
        "transferkit.cpu": model,
        "transferkit.cpu_isa": isa,
        "transferkit.tensorflow": version(*TENSORFLOW_DISTRIBUTIONS),
        "transferkit.keras": version("keras"),
        "transferkit.onednn": onednn_setting(),
        "transferkit.litert": version("ai-edge-litert"),  # XNNPACK comes inside it
        "transferkit.tf_intra_op_threads": str(intra_op_threads()),
    }
