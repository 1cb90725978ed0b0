"""trainers.models.raft: RAFT-small as published (the burst benchmark times it against our aligner)."""
import pytest

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from trainers.models.raft import RaftSmall, correlation_pyramid, look_up  # noqa: E402


def test_raft_small_has_the_published_parameter_count_and_gives_a_full_size_flow():
    torch.manual_seed(0)
    net = RaftSmall().eval()
    assert sum(p.numel() for p in net.parameters()) == 990_162  # torchvision's raft_small
    a, b = torch.rand(1, 3, 64, 96) * 2 - 1, torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.inference_mode():
        flow = net(a, b, updates=2)
    assert flow.shape == (1, 2, 64, 96) and torch.isfinite(flow).all()
    with pytest.raises(ValueError, match="multiples of 8"):
        net(a[..., :60], b[..., :60])


def test_look_up_reads_the_correlation_of_the_matched_pixel_at_the_window_centre():
    torch.manual_seed(1)
    f1, f2 = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    pyramid = correlation_pyramid(f1, f2, levels=2)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    coords = torch.stack([(xs + 2).clamp(max=7), ys])[None]  # each pixel matched 2 to the right
    feats = look_up(pyramid, coords, radius=1)  # (1, 2 levels x 9, 8, 8); index 4 is the centre at level 0
    want = (f1[0, :, 3, 1] * f2[0, :, 3, 3]).sum() / 8**0.5
    assert torch.allclose(feats[0, 4, 3, 1], want, atol=1e-5)
