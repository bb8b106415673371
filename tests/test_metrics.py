"""The project's metrics: PSNR as scikit-image computes it, SSIM as the SIDD/NAFNet papers do."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from ssim_reference import ssim_3d_reference

from denoise.metrics import psnr, psnr_batch, ssim, to_batch, to_uint8


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    return noisy, clean


def test_psnr_matches_skimage(pair) -> None:
    noisy, clean = pair
    assert psnr(noisy, clean) == pytest.approx(
        peak_signal_noise_ratio(clean, noisy, data_range=255), abs=1e-9
    )


def test_ssim_is_the_papers_3d_gaussian_form(pair) -> None:
    noisy, clean = pair
    assert ssim(noisy, clean) == pytest.approx(ssim_3d_reference(noisy, clean), abs=1e-12)
    assert ssim(clean, clean) == pytest.approx(1.0)
    # Not scikit-image's per-channel mean (what MMagic reports): on a smooth image the 3-D
    # window also averages noise across colours, so the two differ a lot.
    y, x = np.mgrid[0:48, 0:40]
    smooth = np.stack([x * 4, y * 3, 255 - x * 4 - y], -1).clip(0, 255).astype(np.uint8)
    grainy = np.clip(smooth + np.random.default_rng(0).normal(0, 12, smooth.shape), 0, 255)
    grainy = grainy.astype(np.uint8)
    per_channel = structural_similarity(
        smooth, grainy, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5
    )
    assert ssim(grainy, smooth) - per_channel > 0.3


def test_ssim_takes_any_size_and_refuses_floats() -> None:
    # Replicated edges: no border is cut, so even a 1x1 image has an SSIM.
    rng = np.random.default_rng(1)
    for shape in ((1, 1, 3), (5, 3, 3), (9, 40, 1)):
        a, b = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
        assert ssim(a, a) == pytest.approx(1.0)
        assert ssim(a, b) == pytest.approx(ssim_3d_reference(a, b), abs=1e-12)
    with pytest.raises(ValueError, match="expected uint8 images, got float32"):
        ssim(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.uint8))


def test_a_uint8_image_becomes_the_batch_backends_take() -> None:
    batch = to_batch(np.array([[[0, 128, 255]]], np.uint8))
    assert batch.shape == (1, 3, 1, 1) and batch.dtype == np.float32
    assert batch.ravel().tolist() == [0.0, np.float32(128 / 255), 1.0]


def test_scores_are_on_clamped_quantised_output() -> None:
    img = np.array([[[-0.2, 0.5, 1.3]]], np.float32)
    assert to_uint8(img).tolist() == [[[0, 128, 255]]]
    chw = torch.tensor(img).permute(2, 0, 1)
    assert to_uint8(chw).tolist() == [[[0, 128, 255]]]


def test_batch_psnr_equals_per_image_psnr(pair) -> None:
    noisy, clean = pair
    n = torch.from_numpy(noisy).permute(2, 0, 1)[None].float() / 255
    c = torch.from_numpy(clean).permute(2, 0, 1)[None].float() / 255
    batch = torch.cat([n, c]), torch.cat([c, n])
    got = psnr_batch(*batch)
    assert got[0].item() == pytest.approx(psnr(noisy, clean), abs=1e-6)
    assert got[1].item() == pytest.approx(psnr(clean, noisy), abs=1e-6)


def test_batch_psnr_quantises_both_images_as_psnr_does() -> None:
    """Values off the 1/255 grid (a network's output; a target, too, if ever given one): both
    are clamped and rounded to uint8 before they are compared."""
    gen = torch.Generator().manual_seed(2)
    pred, target = (torch.rand(2, 3, 8, 8, generator=gen) * 1.2 - 0.1 for _ in range(2))
    got = psnr_batch(pred, target)
    for i in range(2):
        want = psnr(to_uint8(pred[i]), to_uint8(target[i]))
        assert got[i].item() == pytest.approx(want, abs=1e-6)


def test_psnr_refuses_float_images(pair) -> None:
    noisy, clean = pair
    with pytest.raises(ValueError, match="expected uint8 images"):
        psnr(noisy.astype(np.float32) / 255, clean.astype(np.float32) / 255)


def test_identical_images_have_infinite_psnr(pair) -> None:
    assert psnr(pair[1], pair[1]) == float("inf")
