"""The rank image (``cell_input.equalize``): the second input channel that no increasing intensity map changes."""

import torch

from ana_lightning.models.backbones import create_backbone
from ana_lightning.models.cells import CellInput, cell_equalize, cell_normalize


def _cells(n=3, size=32, seed=0):
    """8-bit cells: texture inside a square mask, a dim glow outside it."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[:, 6:26, 6:26] = True
    levels = torch.randint(130, 250, (n, size, size), generator=g)
    inten = torch.where(mask, levels, torch.full_like(levels, 8)) / 255.0
    return inten, mask


def test_rank_is_the_fraction_of_mask_pixels_at_or_below():
    inten, mask = _cells()
    r = cell_equalize(inten, mask)
    for k in range(inten.shape[0]):
        inside = inten[k][mask[k]]
        for y, x in [(10, 10), (20, 7), (0, 0)]:
            want = (inside <= inten[k, y, x] + 1e-9).float().mean()
            assert torch.isclose(r[k, y, x], want, atol=1e-6), (k, y, x)
    assert float(r[mask].max()) == 1.0 and float(r.min()) >= 0.0


def test_rank_survives_gamma_where_the_scaled_intensity_does_not():
    inten, mask = _cells()
    x = torch.stack([inten, inten, mask.float()], 1)
    gamma = x.clone()
    # gamma 2 on the 8-bit range: increasing, and keeps the grey levels 130-250 used here apart
    gamma[:, :2] = (gamma[:, :2].pow(2.0) * 255).round() / 255
    a = cell_normalize(x, "channel", background=True, equalize=True)
    b = cell_normalize(gamma, "channel", background=True, equalize=True)
    assert torch.equal(a[:, 1], b[:, 1])  # the rank channel is unchanged
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-2)  # the scaled intensity is not
    assert torch.equal(a[:, 2], mask.float())


def test_cell_without_mask_pixels_ranks_against_the_whole_crop():
    inten, _ = _cells(n=1)
    none = torch.zeros_like(inten, dtype=torch.bool)
    assert torch.equal(cell_equalize(inten, none), cell_equalize(inten, torch.ones_like(none)))


def test_equalize_is_off_by_default_and_reaches_the_network():
    body = create_backbone("resnet10t", num_classes=6, pretrained=False)
    x = torch.stack([*_cells(n=2)[0].unsqueeze(1).expand(-1, 2, -1, -1).unbind(1), _cells(n=2)[1].float()], 1)
    off = CellInput(body, mask="channel", background=True)
    on = CellInput(body, mask="channel", background=True, equalize=True)
    assert not off.equalize
    assert torch.equal(off.prepare(x)[:, 1], off.prepare(x)[:, 0])
    assert not torch.equal(on.prepare(x)[:, 1], on.prepare(x)[:, 0])
