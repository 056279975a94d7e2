"""The CPUs a run may keep busy: the process's affinity lowered to its cgroup's CPU quota (docker --cpus, a
Kubernetes limit), read from cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`; trees laid out as the kernel does."""

from __future__ import annotations

import math
import os
from pathlib import Path

from odbench.machine import cgroup_cpu_quota, usable_cpus


def _tree(root: Path, files: dict[str, str], membership: str) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "self-cgroup").write_text(membership)
    return root / "self-cgroup"


def test_v2_takes_the_tightest_quota_from_its_own_cgroup_up(tmp_path):
    membership = _tree(tmp_path, {"cg/a/cpu.max": "150000 100000\n", "cg/a/b/cpu.max": "max 100000\n",
                                  "cg/cpu.max": "400000 100000\n"}, "0::/a/b\n")
    assert cgroup_cpu_quota(tmp_path / "cg", membership) == 1.5


def test_v1_reads_the_cpu_controllers_mount_even_when_the_path_is_the_hosts(tmp_path):
    """Inside a container the path names the host's cgroup; the container sees its own at the mount's root."""
    membership = _tree(tmp_path, {"cg/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                                  "cg/cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
                       "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(tmp_path / "cg", membership) == 2.0


def test_no_quota_unset_unreadable_or_garbled_is_none(tmp_path):
    unset = _tree(tmp_path / "unset", {"cg/cpu.max": "max 100000\n", "cg/cpu/cpu.cfs_quota_us": "-1\n",
                                       "cg/cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n0::/\n")
    garbled = _tree(tmp_path / "garbled", {"cg/cpu.max": "lots\n"}, "0::/\n")
    assert cgroup_cpu_quota(tmp_path / "unset" / "cg", unset) is None
    assert cgroup_cpu_quota(tmp_path / "garbled" / "cg", garbled) is None
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "no-such-file") is None


def test_a_path_outside_the_namespace_root_reads_nothing(tmp_path):
    """`/../x`: a cgroup outside this namespace's root, whose folders here (or above the root) are not its own."""
    membership = _tree(tmp_path, {"cpu.max": "100000 100000\n", "cg/cpu.max": "50000 100000\n",
                                  "cg/x/cpu.max": "50000 100000\n"}, "0::/../../x\n")
    assert cgroup_cpu_quota(tmp_path / "cg", membership) is None


def test_v1_controllers_listed_in_another_order_find_their_mount(tmp_path):
    membership = _tree(tmp_path, {"cg/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
                                  "cg/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, "2:cpuacct,cpu:/\n")
    assert cgroup_cpu_quota(tmp_path / "cg", membership) == 0.5


def test_malformed_or_foreign_lines_are_skipped_not_raised(tmp_path):
    membership = _tree(tmp_path, {"cg/cpu.max": "300000 100000\n"}, "\ngarbage\n1:name=systemd:/\n0::/\n")
    assert cgroup_cpu_quota(tmp_path / "cg", membership) == 3.0
    (tmp_path / "latin1").write_bytes(b"0::/caf\xe9\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "latin1") is None


def test_this_process_uses_its_affinity_lowered_to_its_own_quota():
    affinity = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    assert usable_cpus() == (max(1, min(affinity, math.ceil(quota))) if quota else affinity)
