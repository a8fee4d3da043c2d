"""Separate training (survey §5.4, Fig. 3b) and non-neural heads (SklearnHead)."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

import exitnet as ee
from exitnet.heads import SklearnHead, create_head
from exitnet.policies import Entropy
from exitnet.train import Backbone, Separate, fit_sklearn_heads


def _net() -> ee.MultiExitNetwork:
    torch.manual_seed(0)
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=3, width=4)
    return ee.MultiExitNetwork.from_module(
        backbone, ["layer1", "layer2.0"], num_classes=3, sample_input=torch.zeros(1, 1, 8, 8)
    )


def _data() -> ee.data.Dataset:
    return ee.data.synthetic(120, num_classes=3, input_shape=(1, 8, 8), seed=5, val_fraction=0.2, test_fraction=0.1)


def _backbone_state(net: ee.MultiExitNetwork) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith("stages.")}


def test_pretrained_backbone_stays_bit_identical_buffers_too() -> None:
    net, ds = _net(), _data()
    before = _backbone_state(net)
    heads_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("heads.")}
    ee.fit(net, Separate(pretrained=True), ds.train, ds.val, epochs=2, progress=False, batch_size=16)
    after = net.state_dict()
    assert any("running_mean" in k for k in before)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # weights, BatchNorm running statistics and counters
    assert any(not torch.equal(v, after[k]) for k, v in heads_before.items())


def test_backbone_phase_then_heads_phase() -> None:
    net, ds = _net(), _data()
    s = Separate()
    assert s.phases(net, 4) == [2, 2]
    s.setup(net)
    x, y = ds.train.x[:8], ds.train.y[:8]
    for phase in (0, 1):
        net.zero_grad(set_to_none=True)
        s.start_phase(net, phase, ds.train)
        s.train_mode(net)
        s.loss(net, s.forward(net, x), y, epoch=0, epochs=1).backward()
        stage_grads = [p.grad is not None for p in net.stages.parameters()]
        aux_grads = [p.grad is not None for h in net.heads[:-1] for p in h.parameters()]
        if phase == 0:
            assert all(stage_grads) and not any(aux_grads)
        else:
            assert not any(stage_grads) and all(aux_grads)
            assert not any(m.training for m in net.stages.modules())


def test_backbone_strategy_trains_only_the_backbone() -> None:
    net, ds = _net(), _data()
    heads = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("heads.")}
    ee.fit(net, Backbone(), ds.train, epochs=1, progress=False, batch_size=16)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in heads.items())


@pytest.mark.parametrize(
    "estimator",
    [
        LogisticRegression(max_iter=200),
        CalibratedClassifierCV(SVC(), ensemble=False),  # an SVM with probabilities
        DecisionTreeClassifier(random_state=0),
        KNeighborsClassifier(3),
    ],
)
def test_sklearn_heads_fit_on_pooled_features(estimator) -> None:
    net, ds = _net(), _data()
    net.heads[0] = SklearnHead(estimator, num_classes=3)
    ee.fit(net, Separate(pretrained=True), ds.train, ds.val, epochs=1, progress=False, batch_size=16)
    head = net.heads[0]
    assert head.classes_ == [0, 1, 2]
    with torch.no_grad():
        h = net.stages[0](ds.val.x)
        logits = net(ds.val.x)[0]
    proba = torch.from_numpy(estimator.predict_proba(h.mean(dim=(2, 3)).numpy())).float()
    assert torch.allclose(torch.softmax(logits, -1), proba / proba.sum(-1, keepdim=True), atol=1e-5)
    exits = Entropy(thresholds=0.5).fit(net(ds.val.x)).decide(net(ds.val.x))  # policies treat it as any head
    assert exits.shape == (len(ds.val),)


def test_only_sklearn_heads_need_no_gradient_epochs() -> None:
    net, ds = _net(), _data()
    net.heads[0] = SklearnHead(LogisticRegression(max_iter=200), num_classes=3)
    net.heads[1] = create_head("sklearn", (8, 4, 4), 3, estimator=KNeighborsClassifier(3))
    s = Separate()
    assert s.phases(net, 2) == [2, 0]
    ee.fit(net, s, ds.train, epochs=2, progress=False, batch_size=16)
    assert net.heads[1].classes_ == [0, 1, 2]
    assert fit_sklearn_heads(_net(), ds.train) == []


def test_unfitted_sklearn_head() -> None:
    head = SklearnHead(LogisticRegression(), num_classes=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = head(torch.randn(2, 3))
    assert torch.equal(out, torch.zeros(2, 4)) and caught
    with pytest.raises(RuntimeError, match="not fitted"):
        SklearnHead(LogisticRegression())(torch.randn(2, 3))
    with pytest.raises(TypeError, match="predict_proba"):
        SklearnHead(object())
    with pytest.raises(ValueError, match="needs estimator"):
        create_head("sklearn", (4,), 3)


def test_a_network_with_a_scikit_learn_head_is_not_saved_silently(tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    import exitnet as ee
    from exitnet.checkpoint import CheckpointError
    from exitnet.heads import SklearnHead

    backbone = ee.backbones.mlp(8, [16], 3)
    net = ee.MultiExitNetwork.from_module(
        backbone,
        ["blocks.0"],
        num_classes=3,
        sample_input=torch.zeros(1, 8),
        head=lambda shape, n: SklearnHead(LogisticRegression(), n),
    )
    with pytest.raises(CheckpointError, match="scikit-learn heads"):
        ee.save(net, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
