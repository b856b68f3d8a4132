"""Offline weights: local .pth / .safetensors files load; the head is re-initialised when classes differ."""

import pytest
import torch
from safetensors.torch import save_file

from ana_lightning.models.backbones import WeightsError, create_backbone, normalization

from conftest import TINY_BACKBONE


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_weights_with_a_different_head(tmp_path, fmt):
    donor = create_backbone(TINY_BACKBONE, num_classes=5)
    sd = donor.state_dict()
    f = tmp_path / f"w.{fmt}"
    if fmt == "pth":
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, f)  # prefixes are stripped
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    model = create_backbone(TINY_BACKBONE, num_classes=3, weights=str(f))
    new = model.state_dict()
    body = [k for k in sd if not k.startswith("fc.")]
    assert all(torch.equal(new[k], sd[k]) for k in body)
    assert new["fc.weight"].shape == (3, sd["fc.weight"].shape[1])


def test_same_classes_load_everything(tmp_path):
    donor = create_backbone(TINY_BACKBONE, num_classes=4)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    model = create_backbone(TINY_BACKBONE, num_classes=4, weights=str(tmp_path / "w.pt"))
    x = torch.randn(2, 3, 32, 32)
    donor.eval(), model.eval()
    assert torch.allclose(donor(x), model(x))


def test_bad_weight_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone(TINY_BACKBONE, num_classes=2, weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        create_backbone(TINY_BACKBONE, num_classes=2, weights=str(tmp_path / "junk.pth"))
    torch.save(create_backbone("resnet18", num_classes=2).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="another architecture"):
        create_backbone("efficientnet_b0", num_classes=2, weights=str(tmp_path / "other.pth"))


def test_normalisation_travels_with_the_backbone():
    mean, std = normalization(create_backbone(TINY_BACKBONE, num_classes=2))
    assert len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std)


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="no_such_net"):
        create_backbone("no_such_net", num_classes=2)


def test_a_key_of_another_network_is_named():
    """cellnet's ``width`` on a resnet (experiment=icpr2012_cells model=cell_resnet10t) is named, with the fix."""
    with pytest.raises(
        ValueError,
        match=r"backbone key width=24 was rejected by the timm backbone 'resnet10t'.*~model\.backbone\.width",
    ):
        create_backbone("resnet10t", num_classes=2, width=24)
    assert create_backbone("cellnet", num_classes=2, width=8)(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    # and the other way round: cellnet takes no resnet key either (it used to ignore any key silently)
    with pytest.raises(
        ValueError, match=r"backbone key stem_width=32 was rejected.*'cellnet'.*~model\.backbone\.stem_width"
    ):
        create_backbone("cellnet", num_classes=2, width=8, stem_width=32)
