"""The bad-input catalogue: every public entry answers a bad input with an error that names what was expected.

One parametrised test (:func:`test_bad_input`) runs every case of :data:`CASES`: an API call that must raise
the given exception with a message matching the pattern, or a command line that must exit non-zero with one
line on stderr, no traceback, and that message. Around it: inputs that are unusual but valid (a batch of one,
a batch far larger than ``batch_size``), ``--help`` on every command, and ``--debug``.
"""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import exitnet as ee
from exitnet import cli
from exitnet.calibration import calibrate
from exitnet.checkpoint import CheckpointError, save_training_state
from exitnet.cost import expected_cost
from exitnet.data import load_dataset, synthetic
from exitnet.outputs import ExitOutputs
from exitnet.policies import Entropy, MaxProb, NotFittedError, get_policy
from exitnet.runtime import ExitResult, predict, stream
from exitnet.train import Joint, get_strategy


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Env:
    """What the cases work on: a tiny 3-exit MLP on 16 features, 4 classes, a fitted policy, a folder."""

    def __init__(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        self.tmp = tmp_path
        self.backbone = ee.backbones.mlp(16, [32, 32, 32], 4)
        self.net = ee.MultiExitNetwork.from_module(
            self.backbone, ["blocks.0", "blocks.1"], num_classes=4, sample_input=torch.zeros(1, 16), head="linear"
        ).eval()
        self.policy = Entropy(thresholds=[0.5, 0.5]).fit(torch.zeros(3, 1, 4))
        self.x = torch.randn(8, 16)
        self.y = torch.randint(0, 4, (8,))

    def checkpoint(self) -> Path:
        return ee.save(self.net, self.tmp / "net.safetensors", policy=self.policy)

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path


class CliError(Exception):
    """A command line failed the way a user error should: exit code != 0, one line on stderr, no traceback."""


def _cli(*args: str | Callable[[Env], str]) -> Callable[[Env], Any]:
    """A case that runs ``exitnet <args>`` in-process (``cli.main``); callables among ``args`` get the Env."""

    def run(env: Env) -> None:
        argv = [a(env) if callable(a) else a for a in args]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        _judge(code, err.getvalue())

    return run


def _cli_subprocess(*args: str) -> Callable[[Env], Any]:
    """The same through a real ``python -m exitnet.cli`` process (what a shell user sees)."""

    def run(env: Env) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "exitnet.cli", *args], capture_output=True, text=True, timeout=120, cwd=env.tmp
        )
        _judge(proc.returncode, proc.stderr)

    return run


def _judge(code: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0, f"exit code 0 for a bad command line; stderr: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr!r}"
    raise CliError(lines[0])


def _nan(env: Env) -> torch.Tensor:
    x = env.x.clone()
    x[3, 5] = math.nan
    return x


def _inf(env: Env) -> torch.Tensor:
    x = env.x.clone()
    x[0, 0] = -math.inf
    return x


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Env], Any]
    error: type[BaseException]
    match: str


CASES = [
    # ---------------------------------------------------------------- inputs that do not fit the network
    Case(
        "predict-wrong-features",
        lambda e: predict(e.net, torch.zeros(2, 15), e.policy),
        ValueError,
        r"expects input \(B, 16\), got \(2, 15\)",
    ),
    Case(
        "predict-missing-batch-dim",
        lambda e: predict(e.net, torch.zeros(16), e.policy),
        ValueError,
        r"expects input \(B, 16\), got \(16,\)",
    ),
    Case(
        "predict-image-for-mlp",
        lambda e: predict(e.net, torch.zeros(2, 1, 4, 4), e.policy),
        ValueError,
        r"expects input \(B, 16\)",
    ),
    Case(
        "predict-float64",
        lambda e: predict(e.net, e.x.double(), e.policy),
        ValueError,
        r"weights are torch.float32 but the input is torch.float64",
    ),
    Case(
        "predict-integer-input",
        lambda e: predict(e.net, e.x.long(), e.policy),
        ValueError,
        r"expects floating-point input .* got torch.int64",
    ),
    Case(
        "predict-numpy-input",
        lambda e: predict(e.net, e.x.numpy(), e.policy),
        TypeError,
        r"input must be a torch.Tensor, got ndarray",
    ),
    Case("forward-wrong-shape", lambda e: e.net(torch.zeros(3, 8)), ValueError, r"expects input \(B, 16\)"),
    Case(
        "backbone-wrong-shape",
        lambda e: e.net.forward_backbone(torch.zeros(3, 17)),
        ValueError,
        r"expects input \(B, 16\)",
    ),
    # ---------------------------------------------------------------- NaN / inf: refused, never exited at exit 0
    Case("predict-nan", lambda e: predict(e.net, _nan(e), e.policy), ValueError, r"NaN or inf in 1 sample"),
    Case("predict-inf", lambda e: predict(e.net, _inf(e), e.policy), ValueError, r"NaN or inf in 1 sample"),
    Case(
        "predict-nan-always-exit-policy",
        lambda e: predict(e.net, _nan(e), MaxProb(0.0).fit(torch.zeros(3, 1, 4))),
        ValueError,
        r"NaN or inf",
    ),
    Case("stream-nan", lambda e: list(stream(e.net, [e.x[0], _nan(e)[3]], e.policy)), ValueError, r"NaN or inf"),
    Case(
        "stream-batch-of-two",
        lambda e: list(stream(e.net, [e.x[:2]], e.policy)),
        ValueError,
        r"one sample at a time, got a batch of 2",
    ),
    # ---------------------------------------------------------------- runtime arguments
    Case(
        "predict-batch-size-0",
        lambda e: predict(e.net, e.x, e.policy, batch_size=0),
        ValueError,
        r"batch_size must be >= 1",
    ),
    Case(
        "predict-batch-size-float",
        lambda e: predict(e.net, e.x, e.policy, batch_size=2.5),
        ValueError,  # type: ignore[arg-type]
        r"batch_size must be >= 1 \(an integer\), got 2.5",
    ),
    Case(
        "predict-unfitted-policy",
        lambda e: predict(e.net, e.x, Entropy()),
        NotFittedError,
        r"not fitted yet; call .fit",
    ),
    Case(
        "predict-policy-for-other-depth",
        lambda e: predict(e.net, e.x, Entropy([0.5] * 4).fit(torch.zeros(5, 1, 4))),
        ValueError,
        r"this Entropy was fitted for 5 exits; the network has 3: fit or calibrate it on this network",
    ),
    Case(
        "predict-policy-is-a-string",
        lambda e: predict(e.net, e.x, "entropy"),
        TypeError,  # type: ignore[arg-type]
        r"needs an ExitPolicy, got str",
    ),
    Case(
        "predict-not-a-network",
        lambda e: predict(e.backbone, e.x, e.policy),
        TypeError,  # type: ignore[arg-type]
        r"needs a MultiExitNetwork, got MLP",
    ),
    Case(
        "accuracy-label-count",
        lambda e: predict(e.net, e.x, e.policy).accuracy(e.y[:5]),
        ValueError,
        r"8 predictions but 5 labels",
    ),
    # ---------------------------------------------------------------- thresholds and policies
    Case(
        "threshold-above-1",
        lambda e: MaxProb(thresholds=1.5).fit(torch.zeros(3, 1, 4)),
        ValueError,
        r"threshold of exit 0 must lie in \[0, 1\], got 1.5",
    ),
    Case(
        "threshold-negative",
        lambda e: Entropy([0.2, -0.1]).fit(torch.zeros(3, 1, 4)),
        ValueError,
        r"threshold of exit 1 must lie in \[0, 1\], got -0.1",
    ),
    Case(
        "threshold-nan",
        lambda e: Entropy([math.nan, 0.1]).fit(torch.zeros(3, 1, 4)),
        ValueError,
        r"must lie in \[0, 1\], got nan",
    ),
    Case(
        "threshold-count",
        lambda e: Entropy([0.1, 0.2, 0.3]).fit(torch.zeros(3, 1, 4)),
        ValueError,
        r"one threshold per auxiliary exit: 2 for 3 exits, got 3",
    ),
    Case("decide-before-fit", lambda e: Entropy().decide(torch.zeros(3, 2, 4)), NotFittedError, r"call .fit"),
    Case(
        "unknown-policy",
        lambda e: get_policy("confidence"),
        ValueError,
        r"unknown policy 'confidence'; choose one of: .*entropy",
    ),
    Case("decide-logits-not-3d", lambda e: e.policy.decide(torch.zeros(2, 4)), ValueError, r"must be \[E, B, C\]"),
    # ---------------------------------------------------------------- building networks: unknown names list valid ones
    Case(
        "unknown-exit-point",
        lambda e: ee.MultiExitNetwork.from_module(
            e.backbone, ["blocks.9"], num_classes=4, sample_input=torch.zeros(1, 16)
        ),
        ValueError,
        r"exit point 'blocks.9' is not a module of this network; valid exit points: .*blocks.0",
    ),
    Case(
        "exit-points-out-of-order",
        lambda e: ee.MultiExitNetwork.from_module(
            e.backbone, ["blocks.1", "blocks.0"], num_classes=4, sample_input=torch.zeros(1, 16)
        ),
        ValueError,
        r"execution order",
    ),
    Case(
        "unknown-head-kind",
        lambda e: ee.create_head("attention", (16,), 4),
        ValueError,
        r"unknown head kind 'attention'; choose one of: .*linear.*pool",
    ),
    Case(
        "unknown-head-in-builder",
        lambda e: ee.MultiExitNetwork.from_module(
            e.backbone, ["blocks.0"], num_classes=4, sample_input=torch.zeros(1, 16), head="conv"
        ),
        ValueError,
        r"unknown head kind 'conv'; choose one of",
    ),
    Case(
        "num-classes-mismatch-backbone",
        lambda e: ee.MultiExitNetwork.from_module(
            e.backbone, ["blocks.0"], num_classes=10, sample_input=torch.zeros(1, 16)
        ),
        ValueError,
        r"logits \(B, 10\), got \(B, 4\); check num_classes",
    ),
    Case(
        "unknown-strategy",
        lambda e: get_strategy("distill-everything"),
        ValueError,
        r"unknown strategy 'distill-everything'; choose one of: .*joint",
    ),
    Case(
        "stages-heads-count",
        lambda e: ee.MultiExitNetwork([torch.nn.Identity()] * 2, [torch.nn.Identity()]),
        ValueError,
        r"2 stages but 1 heads",
    ),
    Case(
        "exit-outputs-ragged",
        lambda e: ExitOutputs((torch.zeros(2, 4), torch.zeros(2, 5))),
        ValueError,
        r"exit 0 gives \(2, 4\), exit 1 gives \(2, 5\)",
    ),
    # ---------------------------------------------------------------- classes of heads vs labels, calibration targets
    Case(
        "calibrate-labels-beyond-classes",
        lambda e: calibrate(Entropy(), torch.randn(3, 8, 4), torch.arange(8), max_accuracy_drop=0.01),
        ValueError,
        r"labels must lie in \[0, 3\] for 4 classes",
    ),
    Case(
        "report-labels-beyond-classes",
        lambda e: ee.analysis.report(torch.randn(3, 8, 4), torch.arange(8)),
        ValueError,
        r"labels must lie in \[0, 3\] for 4 classes",
    ),
    Case(
        "calibrate-label-count",
        lambda e: calibrate(Entropy(), torch.randn(3, 8, 4), torch.zeros(7, dtype=torch.long), max_accuracy_drop=0.01),
        ValueError,
        r"8 samples but there are 7 labels",
    ),
    Case(
        "calibrate-drop-out-of-range",
        lambda e: calibrate(Entropy(), torch.randn(3, 8, 4), e.y, max_accuracy_drop=1.5),
        ValueError,
        r"max_accuracy_drop must lie in \[0, 1\]",
    ),
    Case(
        "calibrate-no-target",
        lambda e: calibrate(Entropy(), torch.randn(3, 8, 4), e.y),
        ValueError,
        r"exactly one of max_accuracy_drop",
    ),
    pytest.param(
        Case(
            "fit-labels-beyond-classes",
            lambda e: ee.fit(e.net, Joint(), (e.x, torch.arange(8)), epochs=1, progress=False),
            ValueError,
            r"4 classes|labels",
        ),
        id="fit-labels-beyond-classes",
    ),
    Case(
        "fit-empty-data",
        lambda e: ee.fit(e.net, Joint(), (e.x[:0], e.y[:0]), epochs=1, progress=False),
        ValueError,
        r"no samples",
    ),
    Case(
        "expected-cost-bad-exit",
        lambda e: expected_cost([0, 3], [1.0, 2.0, 3.0]),
        ValueError,
        r"exit indices must lie in \[0, 2\], got 0..3",
    ),
    # ---------------------------------------------------------------- data
    Case(
        "unknown-dataset",
        lambda e: load_dataset("cifar-100"),
        ValueError,
        r"unknown dataset 'cifar-100'; choose one of",
    ),
    Case("synthetic-bad-noise", lambda e: synthetic(10, noise=-1.0), ValueError, r"noise must be >= 0"),
    Case(
        "digits-bad-fraction",
        lambda e: ee.data.digits(val_fraction=1.5),
        ValueError,
        r"val_fraction must be in \(0, 1\)",
    ),
    # ---------------------------------------------------------------- checkpoints
    Case("load-missing", lambda e: ee.load(e.tmp / "nope.safetensors"), CheckpointError, r"file not found"),
    Case("load-folder", lambda e: ee.load(e.tmp), CheckpointError, r"is a folder"),
    Case(
        "load-pickle",
        lambda e: ee.load(e.file("m.pt", b"\x80\x04\x95\x00")),
        CheckpointError,
        r"PyTorch pickle .* arbitrary code",
    ),
    Case(
        "load-truncated",
        lambda e: ee.load(e.file("t.safetensors", e.checkpoint().read_bytes()[:-7])),
        CheckpointError,
        r"safetensors",
    ),
    Case(
        "load-text-file",
        lambda e: ee.load(e.file("notes.txt", b"hello world\n" * 4)),
        CheckpointError,
        r"not a safetensors file",
    ),
    Case(
        "load-into-other-architecture",
        lambda e: ee.checkpoint.load_into(
            ee.MultiExitNetwork.from_module(
                ee.backbones.mlp(16, [8, 8, 8], 4),
                ["blocks.0", "blocks.1"],
                num_classes=4,
                sample_input=torch.zeros(1, 16),
                head="linear",
            ),
            e.checkpoint(),
        ),
        CheckpointError,
        r"has shape \(8, 16\) in the network|in the network",
    ),
    Case(
        "training-state-bad-epoch",
        lambda e: save_training_state(e.tmp / "s.safetensors", net=e.net, epoch=-1),
        ValueError,
        r"epoch must be a non-negative integer",
    ),
    Case("save-onto-folder", lambda e: ee.save(e.net, e.tmp), IsADirectoryError, r"is a folder"),
    # ---------------------------------------------------------------- the command line
    Case(
        "cli-unknown-dataset",
        _cli("demo", "--dataset", "cifar", "--out", lambda e: str(e.tmp / "o")),
        CliError,
        r"^error: .*unknown dataset 'cifar'; choose one of: digits, fashion-mnist",
    ),
    Case(
        "cli-epochs-zero",
        _cli("demo", "--epochs", "0"),
        CliError,
        r"^error: .*'--epochs'.* \(see 'exitnet demo --help'\)",
    ),
    Case("cli-epochs-not-a-number", _cli("demo", "--epochs", "many"), CliError, r"^error: .*'--epochs'"),
    Case("cli-unknown-option", _cli("demo", "--bogus"), CliError, r"^error: No such option: --bogus"),
    Case("cli-unknown-command", _cli("frobnicate"), CliError, r"^error: No such command 'frobnicate'"),
    Case("cli-missing-option-value", _cli("demo", "--out"), CliError, r"^error: Option '--out' requires an argument"),
    Case(
        "cli-evaluate-missing-checkpoint",
        _cli("evaluate", lambda e: str(e.tmp / "nope.safetensors"), "--data", "digits"),
        CliError,
        r"^error: no checkpoint at .*nope.safetensors",
    ),
    Case(
        "cli-evaluate-pickle",
        _cli("evaluate", lambda e: str(e.file("model.pt", b"\x80\x04\x95\x00" * 8)), "--data", "digits"),
        CliError,
        r"^error: .*PyTorch pickle",
    ),
    Case(
        "cli-evaluate-input-shape",
        _cli("evaluate", lambda e: str(e.checkpoint()), "--data", "digits"),
        CliError,
        r"^error: the network expects input \(B, 16\), got \(1, 1, 8, 8\)",
    ),
    Case(
        "cli-evaluate-unknown-dataset",
        _cli("evaluate", lambda e: str(e.checkpoint()), "--data", "imagenet"),
        CliError,
        r"^error: unknown dataset 'imagenet'; choose one of",
    ),
    Case(
        "cli-evaluate-missing-data",
        _cli("evaluate", lambda e: str(e.checkpoint())),
        CliError,
        r"^error: Missing option '--data'",
    ),
    Case(
        "cli-evaluate-drop-out-of-range",
        _cli("evaluate", "x.safetensors", "--data", "digits", "--max-drop", "2"),
        CliError,
        r"^error: .*'--max-drop'",
    ),
    Case(
        "cli-report-missing", _cli("report", lambda e: str(e.tmp / "missing.json")), CliError, r"^error: no report at"
    ),
    Case(
        "cli-report-bad-json",
        _cli("report", lambda e: str(e.file("report.json", b"{not json"))),
        CliError,
        r"^error: .*is not valid JSON",
    ),
    Case(
        "cli-bench-unknown-suite",
        _cli("bench", "--suite", "everything"),
        CliError,
        r"^error: .*unknown suite 'everything'; choose one of",
    ),
    pytest.param(
        Case(
            "cli-subprocess-unknown-dataset",
            _cli_subprocess("demo", "--dataset", "svhn"),
            CliError,
            r"^error: .*unknown dataset 'svhn'",
        ),
        marks=pytest.mark.slow,  # a fresh interpreter imports torch: seconds (tests/test_demo_cli.py does one)
        id="cli-subprocess-unknown-dataset",
    ),
]


def _param(case: Any) -> Any:
    return case if not isinstance(case, Case) else pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    env = Env(tmp_path)
    with pytest.raises(case.error, match=case.match):
        case.run(env)


def test_catalogue_is_large() -> None:
    assert len(CASES) >= 30
    ids = [(c if isinstance(c, Case) else c.values[0]).id for c in CASES]
    assert len(ids) == len(set(ids))
    assert sum(i.startswith("cli-") for i in ids) >= 5


# -------------------------------------------------------------------------------------------- unusual, valid inputs
def test_batch_of_one_and_empty(tmp_path: Path) -> None:
    env = Env(tmp_path)
    one = predict(env.net, env.x[:1], env.policy)
    assert one.pred.shape == (1,) and one.exit_index.shape == (1,)
    assert [s.pred for s in stream(env.net, [env.x[0], env.x[1:2]], env.policy)] == predict(
        env.net, env.x[:2], env.policy
    ).pred.tolist()
    empty = predict(env.net, env.x[:0], env.policy)
    assert isinstance(empty, ExitResult) and empty.pred.numel() == 0


def test_large_batch_is_processed_in_chunks(tmp_path: Path) -> None:
    env = Env(tmp_path)
    x = torch.randn(5000, 16)
    env.net.cost_profile()  # computed once, on one sample; not part of what is measured here
    seen: list[int] = []
    hook = env.net.stages[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    try:
        chunked = predict(env.net, x, env.policy, batch_size=64)
    finally:
        hook.remove()
    assert max(seen) == 64 and sum(seen) == 5000  # stage 0 never saw more than one chunk
    whole = predict(env.net, x, env.policy, batch_size=5000)
    assert torch.equal(chunked.pred, whole.pred) and torch.equal(chunked.exit_index, whole.exit_index)


def test_nan_logits_never_leave_early() -> None:
    logits = torch.randn(3, 6, 4)
    logits[0, 2] = math.nan
    logits[1, 2] = math.nan
    for policy in (Entropy([1.0, 1.0]), MaxProb([0.0, 0.0])):  # thresholds that let every finite sample out
        exits = policy.fit(logits).decide(logits)
        assert exits[2] == 2 and (exits[torch.arange(6) != 2] == 0).all()


# -------------------------------------------------------------------------------------------- the command line
def _commands() -> list[list[str]]:
    """Every command path of the ``exitnet`` app (sub-apps included)."""
    import typer.main

    group = typer.main.get_command(cli.app)
    paths = [[]]
    for name, cmd in getattr(group, "commands", {}).items():
        paths.append([name])
        for sub in getattr(cmd, "commands", {}):
            paths.append([name, sub])
    return paths


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "exitnet")
def test_every_command_has_help(path: list[str]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*path, "--help"]) == 0
    assert "Usage" in out.getvalue() and "--help" in out.getvalue()


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(Exception, match="unknown dataset 'cifar'"):
        cli.main(["--debug", "demo", "--dataset", "cifar"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # after the command, --debug is an unknown option of that command
        assert cli.main(["demo", "--debug"]) == 2
    assert "No such option: --debug" in err.getvalue()


def test_internal_error_is_one_line_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise KeyError("oops")

    @app.command()
    def other() -> None:
        """A second command, so that typer keeps command names."""

    monkeypatch.setattr(cli, "app", app)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["boom"]) == 1
    assert err.getvalue().count("\n") == 1 and "internal error (KeyError" in err.getvalue()
    assert "--debug" in err.getvalue()


def test_bare_command_shows_help() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([]) == 0
    assert "demo" in out.getvalue()


def test_numpy_inputs_are_not_silently_converted() -> None:
    net = ee.MultiExitNetwork.from_module(
        ee.backbones.mlp(4, [8], 2), ["blocks.0"], num_classes=2, sample_input=torch.zeros(1, 4)
    )
    with pytest.raises(TypeError, match="torch.Tensor"):
        net(np.zeros((1, 4), dtype=np.float32))  # type: ignore[arg-type]
