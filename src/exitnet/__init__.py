"""exitnet: multi-exit (early-exit) neural networks in PyTorch.

Example:
    >>> import torch, exitnet as ee
    >>> backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=10)
    >>> net = ee.MultiExitNetwork.from_module(backbone, points=["layer1", "layer2"], num_classes=10,
    ...                                       sample_input=torch.zeros(1, 1, 8, 8))
    >>> net(torch.zeros(2, 1, 8, 8)).stack().shape
    torch.Size([3, 2, 10])
"""

from exitnet import analysis, backbones, calibration, data, policies, train
from exitnet._version import __version__
from exitnet.calibration import calibrate, calibrate_iterative, pareto_front
from exitnet.checkpoint import load, load_policy, save
from exitnet.cost import CostProfile, expected_cost, profile
from exitnet.heads import create_head, list_heads
from exitnet.model import MultiExitNetwork
from exitnet.outputs import ExitOutputs
from exitnet.points import list_exit_points
from exitnet.runtime import ExitResult, predict, stream
from exitnet.train import fit

__all__ = [
    "__version__",
    "ExitOutputs",
    "MultiExitNetwork",
    "CostProfile",
    "ExitResult",
    "analysis",
    "backbones",
    "calibrate",
    "calibrate_iterative",
    "calibration",
    "create_head",
    "data",
    "expected_cost",
    "fit",
    "list_exit_points",
    "list_heads",
    "load",
    "load_policy",
    "pareto_front",
    "policies",
    "predict",
    "profile",
    "save",
    "stream",
    "train",
]
