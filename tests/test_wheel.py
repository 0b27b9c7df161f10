"""The built wheel ships what the store needs at run time: its Alembic migrations.

The wheel is built from this checkout (offline: ``--no-build-isolation`` with the dev
extra's hatchling), installed with ``pip install --no-deps --target`` into a temporary
directory, and a fresh interpreter with only that directory in front of the venv's
dependencies runs the migrations from the *installed* package on a new SQLite file and
on a new database of the real PostgreSQL server. A migration or ``env.py`` left out of
the wheel fails here, not at a user's first start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "src" / "callpipe" / "store" / "migrations"

# Runs in the fresh interpreter: where callpipe came from, then upgrade and inspect.
CHECK = textwrap.dedent(
    """
    import asyncio, json, sys

    import sqlalchemy as sa

    import callpipe
    from callpipe.store import engine as store_engine

    async def main(database_url, data_dir):
        engine = store_engine.make_engine(store_engine.async_url(database_url, data_dir))
        try:
            await store_engine.upgrade(engine)
            await store_engine.upgrade(engine)  # a second start finds it up to date
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: sorted(sa.inspect(c).get_table_names()))
                version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar_one()
        finally:
            await engine.dispose()
        print(json.dumps({"package": callpipe.__file__, "tables": tables, "version": version}))

    asyncio.run(main(sys.argv[1] or None, sys.argv[2]))
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, installed (without dependencies) into a fresh directory."""
    root = tmp_path_factory.mktemp("wheel")
    dist, site = root / "dist", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob("callpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in [MIGRATIONS / "env.py", *sorted((MIGRATIONS / "versions").glob("*.py"))]:
        assert f"callpipe/{source.relative_to(ROOT / 'src' / 'callpipe').as_posix()}" in names, source
    assert not any("__pycache__" in name for name in names)
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def _migrate(site: Path, tmp_path: Path, database_url: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)  # ahead of the venv's editable install of this checkout
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    result = subprocess.run(
        [sys.executable, str(script), database_url, str(tmp_path / "data")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def _newest_revision() -> str:
    revisions = sorted(p.stem.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*.py"))
    return revisions[-1]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_installed_wheel_migrates_a_fresh_database(
    installed: Path, tmp_path: Path, dialect: str, request: pytest.FixtureRequest
) -> None:
    url = "" if dialect == "sqlite" else request.getfixturevalue("postgres_server").new_database()
    data = _migrate(installed, tmp_path, url)
    assert Path(data["package"]).is_relative_to(installed), data["package"]  # not this checkout
    assert {"calls", "instances", "dial_bucket", "used_tokens", "webhook_outbox"} <= set(data["tables"])
    assert data["version"] == _newest_revision()
    if dialect == "sqlite":
        assert (tmp_path / "data" / "callpipe.db").is_file()
