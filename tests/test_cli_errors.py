"""Every command line: a bad argument or an I/O error of its own exits 2 with ONE line on stderr and no
traceback; 1 stays "a check failed"; 0 "done".  One row per case: ``(id, argv, substrings of the line)``.
The checks run before any work (no training starts for a bad --out)."""
import os
import subprocess
import sys

import pytest

from nn_from_scratch import cli_errors
from nn_from_scratch.__main__ import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOWHERE = "/proc/no-such-dir/out"          # cannot be created, even by root


def _tf():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


ROWS = [
    ("unknown-command", ["nope"], "unknown command 'nope'"),
    ("no-command", [], "no command"),
    # train
    ("train-epochs-0", ["train", "--epochs", "0"], "--epochs must be >= 1, received 0"),
    ("train-epochs-word", ["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    ("train-batch-neg", ["train", "--batch-size", "-3"], "--batch-size must be >= 1, received -3"),
    ("train-lr-0", ["train", "--lr", "0"], "--lr must be > 0"),
    ("train-seed-neg", ["train", "--seed", "-1"], "--seed must be >= 0, received -1"),
    ("train-optimizer", ["train", "--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    ("train-out-unwritable", ["train", "--out", NOWHERE, "--epochs", "1"], "--out", "cannot write there"),
    ("train-out-is-file", ["train", "--out", "/etc/passwd/x"], "'/etc/passwd' is a file"),
    ("train-save-no-dir", ["train", "--save", "/no/such/dir/m.npz"], "--save", "does not exist"),
    ("train-save-is-dir", ["train", "--save", "/tmp"], "--save '/tmp' is a directory"),
    ("train-unknown-flag", ["train", "--epochz", "3"], "unrecognized arguments"),
    # permutation-test
    ("perm-permutations-0", ["permutation-test", "--permutations", "0"], "--permutations must be >= 1, received 0"),
    ("perm-alpha", ["permutation-test", "--alpha", "1.5"], "--alpha must be in (0, 1), received 1.5"),
    ("perm-n-train", ["permutation-test", "--n-train", "-5"], "--n-train must be >= 20, received -5"),
    ("perm-lr", ["permutation-test", "--lr", "0"], "--lr must be > 0"),
    ("perm-seed", ["permutation-test", "--seed", "-2"], "--seed must be >= 0, received -2"),
    ("perm-patch", ["permutation-test", "--null", "conditional", "--patch", "40"], "--patch must be an integer in [1, 28]"),
    ("perm-sequential", ["permutation-test", "--sequential", "3"], "--sequential belongs to --null conditional"),
    ("perm-jobs-0", ["permutation-test", "--jobs", "0"], "--jobs must be a non-zero integer"),
    ("perm-out", ["permutation-test", "--out", NOWHERE, "--n-train", "50"], "--out", "cannot write there"),
    ("perm-null", ["permutation-test", "--null", "pixels"], "invalid choice: 'pixels'"),
    # separation
    ("sep-permutations-0", ["separation", "--permutations", "0"], "--permutations must be >= 1, received 0"),
    ("sep-seed", ["separation", "--seed", "-1"], "--seed must be >= 0, received -1"),
    ("sep-channels", ["separation", "--channels", "0", "4"], "--channels must be two integers >= 1"),
    ("sep-n-train", ["separation", "--n-train", "5"], "--n-train must be >= 20, received 5"),
    ("sep-lr", ["separation", "--lr", "-1"], "--lr must be > 0"),
    ("sep-model-missing", ["separation", "--model", "/no/such/model.npz", "--out", "/tmp/sep-cli-test"], "--model",
     "/no/such/model.npz"),
    ("sep-data-without-model", ["separation", "--data", "x.npz"], "--data goes with --model"),
    ("sep-out", ["separation", "--out", "/etc/passwd"], "'/etc/passwd' is a file"),
    # grade
    ("grade-nothing", ["grade"], "one of the arguments --layer --model is required"),
    ("grade-batch-0", ["grade", "--model", "m.npz", "--batch", "0"], "--batch must be >= 1, received 0"),
    ("grade-model-missing", ["grade", "--model", "/no/such/model.npz"], "no model file"),
    ("grade-layer-form", ["grade", "--layer", "nope"], "--layer must be MODULE:CLASS"),
    ("grade-shape", ["grade", "--layer", "a:B", "--input-shape", "y"], "a shape is integers"),
]
CROSSCHECK_ROWS = [
    ("cross-steps-0", ["crosscheck", "--steps", "0"], "--steps must be >= 1, received 0"),
    ("cross-batch-0", ["crosscheck", "--batch-size", "0"], "--batch-size must be >= 1, received 0"),
    ("cross-lr", ["crosscheck", "--lr", "-1"], "--lr must be > 0"),
    ("cross-decay", ["crosscheck", "--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    ("cross-seed", ["crosscheck", "--seed", "-1"], "--seed must be >= 0"),
    ("cross-model", ["crosscheck", "--model", "/no/such/model.npz"], "cannot read the model", "/no/such/model.npz"),
    ("cross-mode", ["crosscheck", "--mode", "sideways"], "invalid choice: 'sideways'"),
]


@pytest.mark.parametrize("argv,needles", [pytest.param(a, n, id=i) for i, a, *n in ROWS + CROSSCHECK_ROWS])
def test_bad_command_line_exits_2_with_one_line(argv, needles, capsys):
    if argv and argv[0] == "crosscheck" and not _tf():
        pytest.skip("the cross-check needs TensorFlow")
    assert cli(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in err if not line.startswith("note: grade --layer")]    # grade's standing note
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "error" in err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])


def test_the_nowhere_directory_cannot_be_made():
    with pytest.raises(OSError):
        os.makedirs(NOWHERE)


def test_a_bad_out_is_refused_before_anything_is_created(tmp_path):
    target = tmp_path / "made" / "deeper"
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK) and os.geteuid() == 0:
            (tmp_path / "made").mkdir()                         # root writes anyway: use a file in the way
            (tmp_path / "made" / "deeper").write_text("x")
            target = tmp_path / "made" / "deeper" / "out"
        with pytest.raises(cli_errors.UsageError, match="--out"):
            cli_errors.output_directory(str(target))
    finally:
        os.chmod(tmp_path, 0o700)
    ok = tmp_path / "new" / "dir"
    assert cli_errors.output_directory(str(ok)) == str(ok) and not (tmp_path / "new").exists()


def test_status_1_is_kept_for_a_failed_check_and_errors_become_2(capsys):
    assert cli_errors.run(lambda argv: 1) == 1
    assert cli_errors.run(lambda argv: None) == 0

    def broken(argv):
        raise ValueError("bad\ninput")
    assert cli_errors.run(broken, prog="p") == 2
    assert capsys.readouterr().err == "p: error: ValueError: bad input\n"

    def io(argv):
        raise PermissionError(13, "Permission denied", "/x")
    assert cli_errors.command("p")(io)([]) == 2
    assert "p: error: PermissionError: [Errno 13] Permission denied: '/x'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [(["train", "--epochs", "0"], "--epochs must be >= 1"),
                                         (["separation", "--out", "/etc/passwd"], "is a file"),
                                         (["bogus"], "unknown command")])
def test_the_real_processes_exit_2_without_traceback(argv, needle):
    r = subprocess.run([sys.executable, "-m", "nn_from_scratch"] + argv, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
