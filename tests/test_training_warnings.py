"""Training warnings that do not cry wolf (docs/training.md, "Training warnings").

A table of recorded histories, each with the warning the rule must give or its silence:
learning slowly, stuck at chance, the seed lab's lr = 0.5 (the loss falling back to chance after a
spike), the reported correct network (loss 1.35 -> 1.20 -> 1.08 at 85 % accuracy, 3 classes),
a plateau above chance, diverging, NaN, oscillating (taken back, or ending on a spike) and a
lasting rise.  The epoch histories of the seed lab are the ones ``fit`` recorded for
tests/test_seed_lab.py's ``lab_part1`` (seeds 3, 5, 7 at lr = 0.5, seed 3 at lr = 0.05).  Then two
real small fits: a slow, low-confidence learner (the old rule warned on it) and labels that carry
no information.
"""
import math
import types
import warnings

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.training.watchdog import LossWatchdog, chance_verdict, rising_epochs

LN10 = math.log(10)

# name, classes, chance accuracy (best constant guess), samples, losses, accuracies, warned at epoch (None: silent)
CHANCE_CASES = [
    ("learning slowly", 10, 0.10, 1000, [2.31, 2.27, 2.24], [0.105, 0.145, 0.185], None),
    ("learning slowly, a small sample (accuracy noisy)", 3, 0.391, 64, [1.12, 1.09, 1.075], [0.39, 0.40, 0.42],
     None),
    ("falling towards a constant guess from above", 10, 0.10, 1000, [2.45, 2.36, 2.33], [0.100, 0.104, 0.103], 2),
    ("stuck at chance", 10, 0.10, 1000, [2.303, 2.302, 2.3026, 2.3025], [0.10, 0.11, 0.10, 0.11], 2),
    ("lab lr 0.5 seed 5: back to chance after a spike", 10, 0.116, 1000, [2.3842, 2.3012], [0.209, 0.109], 2),
    ("lab lr 0.5 seed 7: loss falls, accuracy falls", 10, 0.116, 1000, [2.3821, 2.2795], [0.197, 0.182], 2),
    ("lab lr 0.5 seed 3: loss rises", 10, 0.116, 1000, [2.251, 2.2635], [0.156, 0.138], 2),
    ("lab lr 0.05 seed 3: below chance level", 10, 0.116, 1000, [2.2979, 2.2192], [0.113, 0.223], None),
    ("reported: 1.35 -> 1.20 -> 1.08 at 85 %", 3, 1 / 3, 600, [1.35, 1.20, 1.08], [0.55, 0.75, 0.85], None),
    ("plateau above chance", 4, 0.25, 2000, [1.37, 1.35, 1.35, 1.35], [0.44, 0.46, 0.46, 0.46], None),
    ("plateau at chance", 4, 0.25, 2000, [1.39, 1.386, 1.386], [0.25, 0.26, 0.25], 2),
    ("diverging (a rising loss, not a chance verdict)", 10, 0.1, 1000, [2.3, 5.1, 40.0], [0.11, 0.10, 0.10], 2),
    ("NaN loss (training stops: not this check's verdict)", 10, 0.1, 1000, [2.3, float("nan")], [0.1, 0.1], None),
    ("one epoch only", 10, 0.1, 1000, [2.31], [0.1], None),
]


def first_chance_warning(k, chance, n, losses, accs):
    """The epoch at which ``fit`` would warn (it judges after every epoch from the second on), or None."""
    for e in range(2, len(losses) + 1):
        if chance_verdict(losses[:e], accs[:e], k, chance, n) is not None:
            return e
    return None


@pytest.mark.parametrize("name,k,chance,n,losses,accs,expected", CHANCE_CASES, ids=[c[0] for c in CHANCE_CASES])
def test_chance_level_table(name, k, chance, n, losses, accs, expected):
    assert first_chance_warning(k, chance, n, losses, accs) == expected


def test_the_reported_case_was_a_false_alarm_of_the_old_rule():
    """The old rule (loss >= 0.97 ln K from epoch 2) fired on it; the loss is falling and the accuracy far above chance."""
    losses = [1.35, 1.20, 1.08]
    assert losses[-1] >= LossWatchdog.CHANCE_FRACTION * math.log(3)
    assert first_chance_warning(3, 1 / 3, 600, losses, [0.34, 0.34, 0.34]) == 2   # same losses at chance accuracy


# name, epoch losses, the fit's epochs, warned at epoch (None: silent)
RISE_CASES = [
    ("falling", [2.3, 1.2, 0.8, 0.6], 4, None),
    ("lasting rise", [0.5, 0.4, 1.0, 1.5, 2.0], 5, 4),
    ("rise in the last epoch", [0.5, 0.4, 1.0], 3, 3),
    ("oscillating, each spike taken back", [0.9, 0.5, 1.2, 0.5, 1.1, 0.5], 6, None),
    ("oscillating, ending on a spike", [0.9, 0.5, 1.2, 0.5, 1.1], 5, 5),
    ("noise of a small converged loss", [0.05, 0.03, 0.07, 0.04], 4, None),
    ("diverging", [2.3, 5.1, 40.0, 900.0], 4, 3),
    ("infinite loss (stop_on_nonfinite=False)", [2.3, 0.9, float("inf"), float("inf")], 4, 4),
]


@pytest.mark.parametrize("name,losses,epochs,expected", RISE_CASES, ids=[c[0] for c in RISE_CASES])
def test_rising_epochs_table(name, losses, epochs, expected):
    warned = next((e for e in range(2, len(losses) + 1) if rising_epochs(losses[:e], last=e == epochs) is not None),
                  None)
    assert warned == expected


def watchdog(k=10, lr=0.1):
    msgs = []
    net = types.SimpleNamespace(output_shape=(k,), optimizer=types.SimpleNamespace(lr=lr))
    return LossWatchdog(net, lambda msg, pbar: msgs.append(msg)), msgs


def run_batches(losses):
    dog, msgs = watchdog()
    for v in losses:
        dog.batch_loss(v, None)
    return msgs


BATCH_CASES = [
    ("oscillating batch losses around a flat level", [0.2, 1.0] * 100, []),
    ("a spike of three batches, taken back", [0.3] * 40 + [3.0] * 3 + [0.3] * 60, []),
    ("a spike of ten batches (the smoothed loss stays risen for 30 batches)", [0.3] * 40 + [3.0] * 10 + [0.3] * 60,
     ["rising"]),
    ("a lasting rise", [0.3] * 40 + [1.5] * 60, ["rising"]),
    ("diverging within the first batches", [2.3, 2.2, 8.0, 90.0, 4000.0] + [9000.0] * 20, ["diverging"]),
    ("falling", list(np.linspace(2.3, 0.2, 200)), []),
]


@pytest.mark.parametrize("name,losses,expected", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_batch_loss_table(name, losses, expected):
    msgs = run_batches(losses)
    assert [w for w in ("rising", "diverging") if any(f"is {w}" in m for m in msgs)] == expected, msgs


def test_the_message_gives_the_evidence():
    dog, msgs = watchdog(k=10, lr=0.5)
    dog.chance([2.3842, 2.3012], [0.209, 0.109], 2, 1000, shares=lambda: [0.116] + [0.0982] * 9)
    (msg,) = msgs
    for part in ("after 2 epochs", "(2.301)", "ln 10 = 2.303", "(10.9 %)", "best constant guess (11.6 %)",
                 "the loss fell but the accuracy fell", "loss 2.384 -> 2.301, accuracy 20.9 % -> 10.9 %", "not learning", "learning rate (0.5)"):
        assert part in msg, (part, msg)
    dog.chance([2.3842, 2.3012, 2.302], [0.209, 0.109, 0.1], 3, 1000)
    assert len(msgs) == 1                                    # once per fit


def fit_warnings(net, X, y, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = net.fit(X, y, verbose=0, **kw)
    return hist, [str(w.message) for w in caught if issubclass(w.category, nf.TrainingWarning)]


def test_a_slow_low_confidence_learner_is_not_called_stuck():
    """Three separable classes, a small learning rate: the accuracy is high from the first epoch while
    the loss is still near ln 3 (the predictions are right but not yet confident): silent.  The old
    rule (loss >= 0.97 ln 3 after epoch 2) warned here."""
    rng = np.random.default_rng(0)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    y = np.arange(600) % 3
    X = (centres[y] + 0.5 * rng.standard_normal((600, 2))).astype(np.float32)
    net = nf.NeuralNetwork([nf.Linear(2, 3, seed=0, kernel_initializer="zeros")], optimizer=nf.SGD(0.0005), workers=1)
    hist, msgs = fit_warnings(net, X, y, epochs=3, batch_size=50, seed=0)
    assert hist["loss"][-1] >= 0.97 * math.log(3), hist["loss"]            # the old rule's level
    assert hist["loss"][2] < hist["loss"][1] < hist["loss"][0] and hist["accuracy"][-1] > 0.8, hist.history
    assert msgs == []


def test_labels_without_information_are_called_not_learning():
    """Random labels, a linear model: the loss stays at ln 4 and the accuracy at chance: warned."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 8)).astype(np.float32)
    y = rng.integers(0, 4, 2000)
    net = nf.NeuralNetwork([nf.Linear(8, 4, seed=0)], optimizer=nf.SGD(0.05), workers=1)
    hist, msgs = fit_warnings(net, X, y, epochs=3, batch_size=50, seed=0)
    assert any("not learning" in m and "no lower than chance level" in m for m in msgs), (hist.history, msgs)
    assert not any("rising" in m for m in msgs)


@pytest.mark.parametrize("reads,expected", [
    ([1.0, 1.0, 2.6, 1.1, 1.0, 2.7, 1.0], []),          # single reads above twice the start: passes
    ([1.0, 1.1, 2.6, 2.7, 2.9], ["rising"]),             # three reads in a row: warned
    ([1.0, 0.8, 0.6, 0.5], []),
], ids=["running mean, single spikes", "running mean, lasting rise", "running mean, falling"])
def test_deferred_reads_table(reads, expected):
    """On CuPy the loss is read as the epoch's running mean about every 0.1 s (``running_loss``)."""
    dog, msgs = watchdog()
    for v in reads:
        dog.running_loss(v, None)
    assert [w for w in ("rising", "diverging") if any(f"is {w}" in m for m in msgs)] == expected, msgs
