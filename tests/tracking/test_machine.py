"""The machine tags: instruction set from /proc/cpuinfo flags, library versions, oneDNN settings."""

from importlib import metadata

from transferkit.tracking.machine import isa_of, machine_tags, onednn_setting, parse_cpuinfo

# Abridged /proc/cpuinfo: an Intel Xeon with AVX-512 and AMX (Sapphire Rapids), an AMD EPYC with AVX2,
# an ARM Neoverse with SVE.
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni \
avx512_bf16 avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni
"""
GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve
CPU implementer\t: 0x41
"""


def test_the_highest_instruction_set_by_onednns_names():
    model, flags = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert model == "Intel(R) Xeon(R) Processor" and "amx_tile" in flags  # the first processor's line
    assert isa_of(flags, "x86_64") == "avx512_core_amx"
    assert isa_of(flags - {"amx_tile"}, "x86_64") == "avx512_core_fp16"
    assert isa_of(flags - {"amx_tile", "avx512_fp16", "avx512_bf16"}, "x86_64") == "avx512_core_vnni"
    assert parse_cpuinfo(EPYC) == ("AMD EPYC 7B12", set(EPYC.split(": ")[-1].split()))
    assert isa_of(parse_cpuinfo(EPYC)[1], "x86_64") == "avx2"
    assert parse_cpuinfo(GRAVITON)[0] is None and isa_of(parse_cpuinfo(GRAVITON)[1], "aarch64") == "sve"
    assert isa_of(set(), "AMD64") == "amd64"  # no /proc/cpuinfo (Windows): the machine type


def test_onednn_setting_follows_tensorflows_variables(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert onednn_setting("x86_64") == "on (default)"
    assert onednn_setting("arm64") == "default"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert onednn_setting("x86_64") == "on (default), max ISA avx2"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert onednn_setting("x86_64") == "off"


def test_machine_tags_name_the_installed_versions(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "4")
    tags = machine_tags()
    assert tags["transferkit.tensorflow"] == metadata.version("tensorflow-cpu")
    assert tags["transferkit.keras"] == metadata.version("keras")
    assert tags["transferkit.litert"] == metadata.version("ai-edge-litert")
    assert tags["transferkit.tf_intra_op_threads"] == "4"
    assert tags["transferkit.cpu"] and tags["transferkit.cpu_isa"]
