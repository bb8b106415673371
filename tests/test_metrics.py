"""The project's metrics agree with scikit-image, the reference implementation."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

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


def test_ssim_matches_skimage_gaussian_protocol(pair) -> None:
    noisy, clean = pair
    ref = structural_similarity(
        clean,
        noisy,
        data_range=255,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(noisy, clean) == pytest.approx(ref, abs=1e-9)
    assert ssim(clean, clean) == pytest.approx(1.0)


def test_an_image_smaller_than_the_ssim_window_is_refused_with_its_size() -> None:
    small = np.zeros((9, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"40x9 is smaller than SSIM's 11x11 window"):
        ssim(small, small)
    smallest = np.zeros((11, 11, 3), np.uint8)
    assert ssim(smallest, smallest) == pytest.approx(1.0)


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
