"""``arm.runtime``: after ``keep_freed_memory`` a loop that frees and reallocates MB-sized buffers reuses pages;
``grow_onednn_cache`` sets oneDNN's kernel cache unless the user did;
``arm.bench.cpu_model`` names the CPU the figures were measured on."""

import os
import platform
import subprocess
import sys

import pytest

LOOP = """
import resource, sys, torch
from arm.runtime import keep_freed_memory
print(int(keep_freed_memory()))
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(300):
    x = torch.empty((4 << 20) + 4096 * (i % 7), dtype=torch.uint8)
    x.fill_(1)  # touch every page
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _run(env_extra: dict[str, str]) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ARM_KEEP_MALLOC")} | env_extra
    out = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return int(applied), int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_buffers_are_reused_not_faulted_in_again():
    applied, faults = _run({})
    assert applied == 1
    # 300 cycles of ~1,030 fresh 4 KiB pages each: faulting them all in again would be ~309k faults; reused pages
    # fault once, when the heap first grows.
    assert faults < 300 * 1030 / 10, faults


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_users_own_setting_wins():
    assert _run({"ARM_KEEP_MALLOC": "1"})[0] == 0
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"})[0] == 0


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux /proc/cpuinfo")
def test_bench_names_the_cpu_and_its_amx_tiles():
    from arm.bench import cpu_model

    report = cpu_model()
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    assert report["amx_bf16"] == ("amx_bf16" in flags)
    assert report["cpu_model"] and report["cpu_model"] in open("/proc/cpuinfo").read()


def test_onednn_cache_grows_unless_the_user_set_it(monkeypatch):
    from arm.runtime import ONEDNN_CACHE_CAPACITY, grow_onednn_cache

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert grow_onednn_cache() and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_CAPACITY)
    assert ONEDNN_CACHE_CAPACITY > 1024  # oneDNN's own default, which an AR fit outgrows
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "300")
    assert not grow_onednn_cache() and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "300"
