"""``callpipe calls list|show|export`` over real SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from callpipe.cli import main
from tests.store_helpers import full_record, started_store

T0 = 1_800_000_000.0


async def _fill(url: str) -> None:
    async with started_store(url) as store:
        for i in range(7):
            store.sink.finish(
                full_record(
                    f"call-{i}",
                    started_at=T0 + i * 60,
                    direction="outbound" if i == 3 else "inbound",
                    caller_says="cancel my order" if i == 5 else "book a table",
                    end_reason="error" if i == 6 else "caller_hangup",
                )
            )
        await store.writer.flush()


@pytest.fixture()
def filled(db_url: str) -> str:
    asyncio.run(_fill(db_url))
    return db_url


def test_list_show_and_filters(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", filled]
    assert main(["calls", "list", *db, "--limit", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["STARTED", "DIR", "FROM"]
    assert [line.split()[-1] for line in out[1:4]] == ["call-6", "call-5", "call-4"]
    assert out[4].startswith("(more: --cursor ")
    cursor = out[4].split()[-1].rstrip(")")
    assert main(["calls", "list", *db, "--limit", "3", "--cursor", cursor, "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [c["call_control_id"] for c in page["calls"]] == ["call-3", "call-2", "call-1"]
    assert main(["calls", "list", *db, "--direction", "outbound", "--json"]) == 0
    assert [c["call_control_id"] for c in json.loads(capsys.readouterr().out)["calls"]] == ["call-3"]
    assert main(["calls", "list", *db, "-q", "CANCEL", "--end-reason", "caller_hangup", "--json"]) == 0
    assert [c["call_control_id"] for c in json.loads(capsys.readouterr().out)["calls"]] == ["call-5"]
    assert main(["calls", "list", *db, "--since", "2027-01-15T08:02:00Z", "--json"]) == 0
    since_ids = [c["call_control_id"] for c in json.loads(capsys.readouterr().out)["calls"]]
    assert since_ids == ["call-6", "call-5", "call-4", "call-3", "call-2"]  # T0 is 2027-01-15T08:00:00Z

    assert main(["calls", "show", *db, "call-2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["call_control_id"] == "call-2" and len(shown["turns"]) == 3
    assert shown["turns"][2]["latency"]["llm_first_token_ms"] == 420.0
    assert main(["calls", "show", *db, "nope"]) == 1
    assert "no call 'nope'" in capsys.readouterr().err
    assert main(["calls", "list", *db, "--since", "last week"]) == 2
    assert "ISO 8601" in capsys.readouterr().err
    assert main(["calls", "list", *db, "--cursor", "zzz"]) == 2


def test_export_json_and_csv(filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", filled]
    assert main(["calls", "export", *db, "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [c["call_control_id"] for c in exported] == [f"call-{i}" for i in range(6, -1, -1)]
    assert all(len(c["turns"]) == 3 for c in exported)
    target = tmp_path / "calls.csv"
    assert main(["calls", "export", *db, "--format", "csv", "-o", str(target), "--end-reason", "error"]) == 0
    assert "1 call(s) written" in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 1 and rows[0]["call_control_id"] == "call-6"
    assert rows[0]["from"] == "+15551230001" and rows[0]["turn_count"] == "3"
    assert rows[0]["transcript"].splitlines()[1] == "caller: book a table"
    assert json.loads(rows[0]["custom"]) == {"outcome": "booked", "crm_id": 7}


def test_the_installed_command_reads_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(_fill(f"sqlite:///{data / 'callpipe.db'}"))
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "callpipe", "calls", "list", "--limit", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "call-6" in result.stdout and "call-5" in result.stdout and "call-4" not in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "callpipe", "calls", "list", "--data-dir", str(tmp_path / "none")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "no call records at" in missing.stderr
