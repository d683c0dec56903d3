"""The command line loads a stage only when its command runs, and every failure is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "zarr", "open_clip")


def _modules_after(argv: list[str]) -> tuple[int, list[str], str]:
    """Run ``clipsae ARGV`` in a fresh interpreter; (exit code, heavy modules imported, stderr)."""
    code = (
        "import sys, json\n"
        "from clipsae.cli import main\n"
        f"sys.argv = ['clipsae', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    rc, heavy = json.loads(p.stdout.strip().splitlines()[-1])
    return rc, heavy, p.stderr


@pytest.mark.parametrize("argv", [["--help"], ["extract", "--help"], ["train", "--help"], ["store", "info", "--help"],
                                  ["sae", "info", "--help"], ["shards", "make", "--help"], ["demo", "--help"],
                                  ["encode", "--help"]])
def test_help_imports_no_heavy_library(argv):
    rc, heavy, _ = _modules_after(argv)
    assert rc == 0 and heavy == []


@pytest.mark.parametrize("argv, message", [
    (["train", "--bogus"], "No such option '--bogus'"),
    (["extract", "--model"], "Option '--model' requires an argument"),
    (["train", "--store", "x", "--batch-size", "many"], "'many' is not a valid integer"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_option_errors_are_one_line_exit_1_and_import_nothing_heavy(argv, message):
    rc, heavy, err = _modules_after(argv)
    assert rc == 1 and heavy == []
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


def test_layers_with_an_empty_item_are_refused(run_cli, tmp_path):
    code, _, err = run_cli("extract", "--model", "ViT-B-32", "--layers", "6,,10", "--shards", str(tmp_path),
                           "--store", str(tmp_path / "s.zarr"))
    assert code == 1 and "has an empty item" in err
    assert not (tmp_path / "s.zarr").exists()


def test_demo_with_no_images_writes_nothing(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--n-images", "0", "--out", str(tmp_path / "d"))
    assert code == 1 and "--n-images must be at least 1" in err
    assert not (tmp_path / "d").exists()


def test_shards_make_into_a_file_is_refused(run_cli, tmp_path):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "out").write_text("keep")
    code, _, err = run_cli("shards", "make", "--from-folder", str(tmp_path / "src"), "--out", str(tmp_path / "out"))
    assert code == 1 and err.startswith("error: ") and "is a file" in err
    assert (tmp_path / "out").read_text() == "keep"


# The demo as a terminal starts it: with Ctrl-C's default action. A command started with `&` by a shell
# without job control (`bash -c 'make test & wait'`, a script) ignores SIGINT, and so does everything it
# starts, this test's demo included, which then ran to its end under Ctrl-C. Python installs its
# KeyboardInterrupt handler only where SIGINT is not ignored at startup, so the reset comes before exec.
AS_FROM_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.executable, [sys.executable, '-m', 'clipsae', *sys.argv[1:]])")


def test_ctrl_c_says_how_to_continue(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "demo", "--out", tmp_path / "d", "--n-images", "64"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "d").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Python drops a Ctrl-C that lands while a finalizer runs ("Exception ignored in ... __del__", seen
    # with regex's under load); a person presses it again, and so does the test, every 10 s for 2 minutes.
    for _ in range(12):
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=10)  # the interrupted demo exits within seconds
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        p.kill()
        pytest.fail(f"clipsae demo did not stop on Ctrl-C; its stderr ends: {p.communicate()[1][-2000:]}")
    assert p.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to continue"


@pytest.mark.parametrize("argv", [[], ["analyze"], ["store"], ["sae"], ["shards"]])
def test_a_group_without_a_subcommand_prints_its_help_and_exits_0(argv, run_cli):
    code, out, err = run_cli(*argv)
    assert code == 0 and err == ""
    assert out.startswith(f"Usage: clipsae{''.join(' ' + a for a in argv)} [OPTIONS] COMMAND [ARGS]...")
    assert "\nCommands:\n" in out and len(out.splitlines()) > 5


def test_version_prints_the_installed_release(run_cli):
    from importlib.metadata import version

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"clipsae {version('clipsae')}"
