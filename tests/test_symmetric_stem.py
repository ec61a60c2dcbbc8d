"""The transpose-symmetric stem: with it, a network whose cells are transpose-equivariant
(pools, skip, 1x1 conv, SE) cannot tell an image from its transpose; learned kxk cells can.
This is the premise of the search benchmark on `bionas synth --task pairs`."""

import pytest
import torch

from bionas.trainer.encoder import reduction_flags
from bionas.trainer.genotype import BUILTIN_CELLS, uniform_genotype
from bionas.trainer.model import ModelConfig, build_model

ISOTROPIC = [
    BUILTIN_CELLS["pool_skip"],
    {"e1": "se", "e2a": "conv_1x1", "e2b": "max_pool_3x3"},
    {"e1": "skip", "e2a": "avg_pool_3x3", "e2b": "se"},  # skip/SE reduce: factorized reduce
]


def pair_images() -> torch.Tensor:
    """Two bright squares side by side on faint noise: transposed, one above the other."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    x[:, :, 10:14, 6:10] += 2
    x[:, :, 10:14, 20:24] += 2
    return x


def network(ops: dict[str, str], stem: str) -> torch.nn.Module:
    torch.manual_seed(0)
    genotype = uniform_genotype(ops, reduction_flags(3))
    cfg = ModelConfig(num_classes=4, channels=6, cells=3, embed_dim=8, stem=stem, genotype=genotype)
    return build_model(cfg).eval()  # no dropout; BN is per channel, symmetric either way


@pytest.mark.parametrize("ops", ISOTROPIC)
def test_isotropic_cells_on_a_symmetric_stem_give_the_same_logits_for_transposed_images(ops):
    model = network(ops, "transpose_symmetric")
    x = pair_images()
    torch.testing.assert_close(model(x), model(x.transpose(-1, -2)), atol=1e-6, rtol=0)


def test_a_learned_stem_or_a_kxk_conv_cell_breaks_the_symmetry():
    x = pair_images()
    free_stem = network(BUILTIN_CELLS["pool_skip"], "learned")
    conv_cells = network(BUILTIN_CELLS["manual"], "transpose_symmetric")
    for model in (free_stem, conv_cells):
        # small at initialisation (random weights), but not float noise: training grows it
        assert (model(x) - model(x.transpose(-1, -2))).abs().max() > 1e-5


def test_the_symmetric_stems_kernels_stay_symmetric_after_a_training_step():
    model = network(BUILTIN_CELLS["manual"], "transpose_symmetric").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(4, 3, 32, 32)).square().sum().backward()
    optimizer.step()
    for conv in (model.image_encoder.stem[0], model.image_encoder.stem[3]):
        w = conv.weight
        torch.testing.assert_close(w, w.transpose(-1, -2))
        assert w.abs().sum() > 0
