"""pytorch-fid's Inception built from a weights file on disk, never downloaded.

Random weights throughout: plumbing only, never used as a metric."""
from __future__ import annotations

from unittest import mock

import numpy as np
import torch

from trainables.metrics.features import PT_FID_FILE, _pytorch_fid_skeleton, load_extractor


def test_local_weights_build_pytorch_fids_network(tmp_path):
    from pytorch_fid import inception as pfi

    torch.manual_seed(0)
    state = _pytorch_fid_skeleton().state_dict()
    torch.save(state, tmp_path / PT_FID_FILE)
    with mock.patch.object(pfi, "load_state_dict_from_url",
                           side_effect=AssertionError("tried to download")):
        ex = load_extractor("pytorch-fid", dims=768, weights_path=tmp_path / PT_FID_FILE,
                            device="cpu")
    # The reference: pytorch-fid's own class on the same weights (its download patched out).
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        ref = pfi.InceptionV3(output_blocks=[2, 3]).eval()
    assert ref.state_dict().keys() <= ex.net.state_dict().keys()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        ours, theirs = ex.net(x), ref(x)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    f, logits = ex.features(images, with_logits=True)
    assert f.shape == (2, 768) and logits.shape == (2, 1008) and np.isfinite(logits).all()
    assert torch.equal(ex.fc.weight, state["fc.weight"])
