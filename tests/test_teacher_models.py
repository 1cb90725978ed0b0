"""NAFNet and NAFSSR: shapes, and loading checkpoints written in the published (BasicSR) layout."""
import pytest

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from trainers.checkpoints import CheckpointMismatch, load_checkpoint  # noqa: E402
from trainers.models.nafnet import NAFNet  # noqa: E402
from trainers.models.nafssr import NAFSSR  # noqa: E402

SMALL = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def test_nafnet_any_size_and_published_key_names():
    net = NAFNet(**SMALL).eval()
    x = torch.rand(1, 3, 21, 30)
    assert net(x).shape == x.shape
    keys = set(net.state_dict())
    for k in ["intro.weight", "ending.bias", "encoders.0.0.conv1.weight", "encoders.0.0.norm1.weight",
              "encoders.0.0.sca.1.weight", "encoders.0.0.beta", "downs.1.weight", "middle_blks.0.gamma",
              "ups.0.0.weight", "decoders.1.0.conv5.bias"]:
        assert k in keys, k


def test_nafssr_stereo_and_single_view():
    net = NAFSSR(up_scale=4, width=8, num_blks=2).eval()
    assert net(torch.rand(1, 6, 10, 12)).shape == (1, 6, 40, 48)
    assert net.upscale_single(torch.rand(2, 3, 10, 12)).shape == (2, 3, 40, 48)
    assert "body.1.module.fusion.l_proj1.weight" in net.state_dict()
    assert "body.0.module.blk.conv2.weight" in net.state_dict()


@pytest.mark.parametrize("layout", ["params", "params_ema", "bare", "dataparallel"])
def test_loads_published_layouts(tmp_path, layout):
    src = NAFNet(**SMALL)
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-0.1, 0.1)
    sd = src.state_dict()
    obj = {"params": sd, "params_ema": sd, "bare": sd,
           "dataparallel": {f"module.{k}": v for k, v in sd.items()}}[layout]
    if layout in ("params", "params_ema"):
        obj = {layout: sd}
    path = tmp_path / "NAFNet-test.pth"
    torch.save(obj, path)
    dst = load_checkpoint(NAFNet(**SMALL), path).eval()
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(dst(x), src.eval()(x))


def test_prefers_ema_weights():
    a, b = NAFNet(**SMALL), NAFNet(**SMALL)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    net = load_checkpoint(NAFNet(**SMALL), {"params": a.state_dict(), "params_ema": b.state_dict()})
    assert torch.equal(net.intro.weight, b.intro.weight)


def test_refuses_wrong_width_and_wrong_architecture(tmp_path):
    wide = NAFNet(**{**SMALL, "width": 16}).state_dict()
    with pytest.raises(CheckpointMismatch, match=r"shape mismatches \(intro.weight: checkpoint \(16, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        load_checkpoint(NAFNet(**SMALL), {"params": wide})
    with pytest.raises(CheckpointMismatch, match="missing keys.*unexpected keys"):
        load_checkpoint(NAFNet(**SMALL), {"params": NAFSSR(width=8, num_blks=1).state_dict()})
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="cannot read .*broken.pth"):
        load_checkpoint(NAFNet(**SMALL), bad)
