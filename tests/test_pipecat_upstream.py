"""Pipecat's own Telnyx example bots, with only ``pipecat`` -> ``callpipe`` on their import lines.

Nothing of the upstream project is committed here. When a copy of
``pipecat-ai/pipecat-examples`` is on the machine (``PIPECAT_EXAMPLES_DIR``: a git
directory or a clone; else a fetched mirror under ``/work/.mirror`` is found), each test
copies ``telnyx-chatbot/`` at one commit to a temporary folder, rewrites the import lines,
checks that nothing else differs from the upstream file, and holds a simulated call:
inbound bots under ``callpipe serve``'s app, outbound bots through the upstream
``server.py`` (its one import line rewritten). Without a copy the tests skip, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.pipecat_harness import check_call, inbound_call, outbound_call, provider_fakes

pytest.importorskip("loguru", reason="Pipecat's example bots import loguru (pip install loguru)")
pytest.importorskip("dotenv", reason="Pipecat's example bots import python-dotenv")

# 09f6547: the Pipecat 1.0-era API (parse_telephony_websocket, PipelineTask, PipelineRunner);
# 39261fc: Pipecat 1.4 (create_transport, PipelineWorker, WorkerRunner).
REVISIONS = {"1.0": "09f6547", "1.4": "39261fc"}
FILES = (
    "telnyx-chatbot/inbound/bot.py",
    "telnyx-chatbot/outbound/bot.py",
    "telnyx-chatbot/outbound/server.py",
)
IMPORT_LINE = re.compile(r"^(\s*(?:from|import)\s+)pipecat(?=[.\s])")


def _examples_git_dir() -> Path | None:
    given = os.environ.get("PIPECAT_EXAMPLES_DIR")
    candidates = [Path(given)] if given else sorted(Path("/work/.mirror").glob("*pipecat-examples*/repo"))
    for path in candidates:
        for git_dir in (path, path / ".git"):
            if (git_dir / "HEAD").exists() and (git_dir / "objects").exists():
                return git_dir
    return None


GIT_DIR = _examples_git_dir()
pytestmark = pytest.mark.skipif(
    GIT_DIR is None,
    reason="no copy of pipecat-ai/pipecat-examples here: set PIPECAT_EXAMPLES_DIR to its git directory",
)


def _upstream(revision: str, path: str) -> str:
    assert GIT_DIR is not None
    return subprocess.run(
        ["git", "--git-dir", str(GIT_DIR), "show", f"{revision}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def port_imports(source: str) -> str:
    """The port: ``pipecat`` -> ``callpipe`` as the module of each import line, nothing else."""
    return "".join(IMPORT_LINE.sub(r"\1callpipe", line) for line in source.splitlines(keepends=True))


def _copy(revision: str, tmp_path: Path) -> Path:
    for path in FILES:
        original = _upstream(revision, path)
        ported = port_imports(original)
        changed = [(a, b) for a, b in zip(original.splitlines(), ported.splitlines(), strict=True) if a != b]
        # Only import lines changed, and only their package name.
        assert changed and all(IMPORT_LINE.match(a) for a, _ in changed), changed
        assert all(b.replace("callpipe", "pipecat", 1) == a for a, b in changed)
        assert len(original.splitlines()) == len(ported.splitlines())
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(ported)
        (target.parent / ".env").write_text("")  # load_dotenv() stops here, not at a stray .env above
    return tmp_path / "telnyx-chatbot"


def test_the_port_rewrites_only_import_lines() -> None:
    text = "from pipecat.frames.frames import X\nimport pipecat.audio\nurl = 'wss://api.pipecat.daily.co'\n"
    assert port_imports(text) == (
        "from callpipe.frames.frames import X\nimport callpipe.audio\nurl = 'wss://api.pipecat.daily.co'\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("era", sorted(REVISIONS))
async def test_upstream_inbound_bot(
    era: str, tmp_path: Path, speech_8k: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(REVISIONS[era], tmp_path)
    with provider_fakes(monkeypatch) as fakes:
        result = await inbound_call(folder / "inbound" / "bot.py", speech_8k)
        await check_call(result, fakes, greets_first=True)


@pytest.mark.slow
@pytest.mark.parametrize("era", sorted(REVISIONS))
async def test_upstream_outbound_bot_through_upstream_server(
    era: str, tmp_path: Path, speech_8k: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("aiohttp", reason="Pipecat's outbound server.py imports aiohttp")
    folder = _copy(REVISIONS[era], tmp_path)
    with provider_fakes(monkeypatch) as fakes:
        result = await outbound_call(folder / "outbound" / "server.py", speech_8k, {"user": "Zoë"})
        await check_call(result, fakes, greets_first=False)
