"""One entry point: ``research COMMAND`` (and ``python -m research COMMAND``) runs every command, the
single-command scripts stay, ``--help`` lists the commands, ``--version`` prints the version; predict shows
progress on a terminal and log lines never break a progress bar."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest
from PIL import Image

from research.__main__ import COMMANDS, main
from tests.conftest import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def test_help_lists_every_command_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: research COMMAND")
    listed = re.findall(r"^  ([a-z-]+)  ", out, flags=re.M)
    assert listed == list(COMMANDS)


def test_the_console_script_and_every_old_script_name_run_the_same_commands():
    assert _resolve(SCRIPTS["research"]) is main
    old = {name: target for name, target in SCRIPTS.items() if name != "research"}
    assert set(old) == set(COMMANDS)  # every command has its old script name, and no script lacks a command
    for name, target in old.items():
        assert _resolve(target) is COMMANDS[name][0], name


def test_version_and_unknown_commands():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "research", "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout == f"research {version}\n"
    bad = subprocess.run([sys.executable, "-m", "research", "trian"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr and "train, sweep, predict" in bad.stderr


def test_a_command_through_the_dispatcher(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--list-models"])
    assert e.value.code == 0 and "scratch_cnn" in capsys.readouterr().out.split()


def _run_on_a_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``python -m research ARGV`` with stderr on a pseudo-terminal (so tqdm draws its bars); the exit code
    and everything written to the terminal."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "research", *argv], stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_predict_shows_progress_and_log_lines_do_not_break_it(trained_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(6):  # faceless images: each one logs a warning while the face-detection bar runs
        Image.new("RGB", (64, 64), (40 * k, 90, 120)).save(folder / f"happy_{k}.png")
    code, terminal = _run_on_a_terminal(
        ["predict", "--run", str(trained_run), str(folder), "--face", "both", "--no-fallback", "--no-gradcam",
         "--wandb", "disabled", "--out", str(tmp_path / "out")]
    )
    assert code == 0, terminal
    segments = [s for s in re.split(r"[\r\n]", terminal) if s.strip()]
    bars = [s for s in segments if re.search(r"(raw|haar): (faces|read|panels): +\d+%\|", s)]
    warnings = [s for s in segments if "no face found; skipped in haar mode" in s]
    assert any(b.startswith("haar: faces:") for b in bars), terminal  # the bar the warnings interrupt
    assert any(b.startswith("raw: panels: 100%") and "6/6" in b for b in bars), terminal
    assert len(warnings) == 6
    # each log line starts on its own line: never written after a half-drawn bar
    assert all(re.match(r"\d\d:\d\d:\d\d WARNING", w) for w in warnings), warnings
