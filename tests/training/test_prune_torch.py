"""Torch-level structured channel pruning: couplings through BatchNorm, the next conv and Flatten into Linear."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from accelserve.errors import InvalidInputError  # noqa: E402
from accelserve.training.prune_torch import prune_channels  # noqa: E402


def _chain_with_dead_channels() -> nn.Sequential:
    """Conv(1->8) ReLU Conv(8->8) ReLU Flatten Linear(8*4*4 -> 3); half of each conv's filters are all zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16, 3))
    with torch.no_grad():
        for conv, dead in ((model[0], [1, 3, 4, 6]), (model[2], [0, 2, 5, 7])):
            conv.weight[dead] = 0.0
            conv.bias[dead] = 0.0
    return model.eval()


def test_pruning_removes_exactly_the_dead_channels_and_keeps_outputs():
    model = _chain_with_dead_channels()
    x = torch.rand(5, 1, 4, 4)
    pruned, summary = prune_channels(model, 0.5)
    assert [c.out_channels for c in (pruned[0], pruned[2])] == [4, 4]
    assert pruned[2].in_channels == 4 and pruned[5].in_features == 4 * 16
    assert summary.layers == [("0", 8, 4), ("2", 8, 4)]
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-6)  # only zero channels went: same function
    assert model[0].out_channels == 8  # the original is untouched


def test_batchnorm_and_pool_head_follow_the_conv():
    from accelserve.examples.digits import digits_module

    model = digits_module(width=8, head="pool").eval()
    pruned, summary = prune_channels(model, 0.75)
    assert [layer for layer, _, _ in summary.layers] == ["0", "3", "7"]
    bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [2, 4, 8]
    assert pruned[-1].in_features == 8 and pruned[-1].out_features == 10  # the classes stay
    assert pruned(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    dense, _ = prune_channels(digits_module(width=8, head="dense").eval(), 0.5)
    assert dense(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert dense[-3].in_features == 16 * 16 and dense[-3].out_features == 64  # Flatten block + hidden units


def test_structures_it_cannot_couple_are_refused_with_a_hint():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):  # noqa: ANN001, ANN202
            return x + self.conv(x)

    with pytest.raises(InvalidInputError, match="nn.Sequential chains") as err:
        prune_channels(Residual(), 0.5)
    assert "prune-channels" in err.value.hint
    with pytest.raises(InvalidInputError, match="grouped/depthwise"):
        prune_channels(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)), 0.5)
    with pytest.raises(InvalidInputError, match="ratio must be in"):
        prune_channels(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), 1.0)
