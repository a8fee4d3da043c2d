"""Synthetic exit logits shared by the policy and calibration tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

import torch


def exit_logits(seed: int = 0, exits: int = 4, n: int = 300, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [E, N, C] whose exits get better with depth, and labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(exits, n, classes, generator=g)
    for i in range(exits):
        logits[i, torch.arange(n), y] += (1.0 + i) * torch.rand(n, generator=g) * 2
    return logits, y


def step_by_step(policy, out) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit and answer of every sample of ``out`` (``ExitOutputs``), one sample at a time, exit by exit, through
    ``check_exits`` / ``init_state`` / ``step`` / ``final_prediction``: what the runtime does, as a plain loop."""
    policy.check_exits(out.num_exits, task=out.task)
    stack, exits, answers = out.stack(), [], []
    for b in range(out.batch_size):
        m = None if out.mask is None else out.mask[b : b + 1]
        state = policy.init_state(1, "cpu", stack.shape[2:])
        for i in range(out.num_exits - 1):
            leaves, state = policy.step(i, stack[i, b : b + 1], state, m)
            if bool(leaves[0]):
                exits.append(i)
                answers.append(stack[i, b].argmax(-1) if out.task == "classification" else stack[i, b])
                break
        else:
            exits.append(out.num_exits - 1)
            answers.append(policy.final_prediction(stack[-1, b : b + 1], state, m, task=out.task)[0])
    return torch.tensor(exits), torch.stack(answers)
