"""The capacity search of ``bench/run.py`` (``bench/harness.py``; pure logic, no servers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def search_until_done(search: Any, capacity: int, overload_at: int | None = None) -> list[int]:
    levels: list[int] = []
    while (level := search.level) is not None:
        levels.append(level)
        overloaded = overload_at is not None and level >= overload_at
        search.feed(level <= capacity and not overloaded, overloaded)
    return levels


@pytest.mark.parametrize("capacity", [13, 95, 173, 250, 333])
def test_fine_search_brackets_capacity_to_five_percent(bench_run: ModuleType, capacity: int) -> None:
    search = bench_run.CapacitySearch(10, 640, resolution=0.05, max_bisections=5)
    levels = search_until_done(search, capacity)
    assert search.best <= capacity
    assert capacity - search.best <= max(2, 0.05 * search.best), levels
    assert not search.capped


def test_default_search_is_coarser_and_never_overshoots(bench_run: ModuleType) -> None:
    search = bench_run.CapacitySearch(10, 640)
    levels = search_until_done(search, 173)
    assert levels[:6] == [10, 20, 40, 80, 160, 320]
    assert len(levels) <= 6 + 3
    assert 160 <= search.best <= 173


def test_overloaded_generator_caps_the_search(bench_run: ModuleType) -> None:
    search = bench_run.CapacitySearch(10, 640)
    search_until_done(search, 1000, overload_at=300)
    assert search.capped
    assert 160 <= search.best < 300


def test_search_stops_at_the_limit(bench_run: ModuleType) -> None:
    search = bench_run.CapacitySearch(10, 100)
    assert search_until_done(search, 1000) == [10, 20, 40, 80]
    assert search.best == 80


@pytest.fixture(scope="module")
def records_capacity() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import records_capacity

        return records_capacity
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_records_summary_gives_capacity_and_cpu_changes(records_capacity: ModuleType) -> None:
    run = records_capacity.RecordsRun
    first = run(
        found={"off": 200, "on": 190},
        capped=[],
        # 20 calls is below the CPU figure's floor, 240 saturated "on" (0.96 of a core), 320
        # was run by one server only; 80 and 160 count (+10% and +4%).
        measured={
            20: {"off": (True, 0.004), "on": (True, 0.006)},
            80: {"off": (True, 0.0040), "on": (True, 0.0044)},
            160: {"off": (True, 0.0050), "on": (False, 0.0052)},
            240: {"off": (True, 0.0030), "on": (False, 0.0040)},
            320: {"off": (False, 0.0060)},
        },
    )
    second = run(found={"off": 180, "on": 189}, capped=[], measured={})
    assert first.change == pytest.approx(-5.0)
    assert first.cpu_change == pytest.approx(7.0)
    assert second.cpu_change is None
    text = records_capacity.summary([first, second])
    assert "200 vs 190 (-5%), 180 vs 189 (+5%); median +0%, worst -5%" in text
    assert "CPU per call-second at 40+ calls below 90% of a core: +7.0% (median +7.0%)" in text


@pytest.fixture(scope="module")
def records_parts(bench_run: ModuleType) -> ModuleType:
    sys.modules.setdefault("harness", bench_run)  # what records_parts imports by that name
    spec = importlib.util.spec_from_file_location("records_parts", ROOT / "bench" / "records_parts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["records_parts"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_records_parts_rotate_and_compare_each_round_with_its_own_off(records_parts: Any) -> None:
    parts = records_parts.PARTS
    orders = [records_parts.rotated(parts, index) for index in range(len(parts))]
    assert [order[0] for order in orders] == list(parts)  # each part goes first once
    assert all(sorted(order) == sorted(parts) for order in orders)
    results = {part: records_parts.PartResult() for part in parts}
    results["off"].cpu = [0.004, 0.005]
    results["both"].cpu = [0.0044, 0.005]
    assert records_parts.changes(results, "both") == pytest.approx([10.0, 0.0])
    for part in ("store", "recording"):
        results[part].cpu = [0.004, 0.005]
    args = type("Args", (), {"calls": 160, "rounds": 2, "duration": 20.0})()
    table = records_parts.render(results, args)
    assert "| both | 4.70 ms | +10.0%, +0.0% | +5.0% | yes | 0 ms |" in table
