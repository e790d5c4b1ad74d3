import pytest
import torch

from satcompress.config import ConfigError
from satcompress.preprocess import (
    AugmentConfig,
    BatchAugment,
    BatchMix,
    InputSpec,
    Preprocess,
    mixing_enabled,
)


def _batch(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_preprocess_normalises_like_hand_computation():
    spec = InputSpec(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    x = _batch()
    expected = (x.float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    assert torch.allclose(Preprocess(spec)(x), expected, atol=1e-5)


def test_preprocess_resizes_to_model_size():
    out = Preprocess(InputSpec(size=12))(_batch(size=8))
    assert out.shape == (16, 3, 12, 12)
    assert out.dtype == torch.float32


def test_augment_only_permutes_pixels_per_image():
    x = _batch(size=8)
    torch.manual_seed(1)
    y = BatchAugment(AugmentConfig())(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    for a, b in zip(x, y, strict=True):
        assert torch.equal(a.flatten(1).sort().values, b.flatten(1).sort().values)
    assert not torch.equal(x, y), "16 images with random flips/rotations should change"


def test_augment_choices_are_per_image_and_seeded():
    x = _batch(n=64)
    torch.manual_seed(3)
    y1 = BatchAugment()(x)
    torch.manual_seed(3)
    y2 = BatchAugment()(x)
    assert torch.equal(y1, y2)
    unchanged = [(torch.equal(a, b)) for a, b in zip(x, y1, strict=True)]
    assert 0 < sum(unchanged) < len(unchanged), "some images kept, some transformed"


def test_augment_off_is_identity():
    x = _batch()
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False)
    assert torch.equal(BatchAugment(cfg)(x), x)


def test_shift_and_jitter_keep_shape_and_range():
    x = _batch(size=16)
    torch.manual_seed(0)
    cfg = AugmentConfig(
        hflip=False, vflip=False, rot90=False, shift=3, brightness=0.2, contrast=0.2
    )
    y = BatchAugment(cfg)(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert not torch.equal(x, y)


def test_shift_translates_content():
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    x[..., 8, 8] = 255
    torch.manual_seed(0)
    y = BatchAugment(AugmentConfig(hflip=False, vflip=False, rot90=False, shift=2))(x)
    row, col = divmod(int(y[0, 0].flatten().argmax()), 16)
    assert abs(row - 8) <= 2 and abs(col - 8) <= 2


@pytest.mark.parametrize(
    "kwargs",
    [dict(mean=(0.1, 0.2)), dict(std=(0.1, 0.0, 0.1)), dict(size=4)],
)
def test_input_spec_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        InputSpec(**kwargs)


def test_input_spec_round_trips():
    spec = InputSpec(size=(32, 48), mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_cutmix_pastes_a_box_from_the_partner_and_mixes_labels_by_area():
    x = torch.stack([torch.full((3, 16, 16), 10 * (i + 1), dtype=torch.uint8) for i in range(4)])
    labels = torch.arange(4)
    torch.manual_seed(0)
    mix = BatchMix(AugmentConfig(cutmix=1.0), num_classes=4)
    for _ in range(5):
        y, targets = mix(x, labels)
        assert y.dtype == torch.uint8 and targets.shape == (4, 4)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        for i in range(4):
            own = (y[i] == x[i, 0, 0, 0]).float().mean()
            partner = (y[i] == x[(i - 1) % 4, 0, 0, 0]).float().mean()  # v2 rolls the batch by 1
            assert own + partner == 1, "every pixel comes from the image or its partner"
            assert torch.isclose(targets[i, i], own) or own == 1


def test_mixup_blends_images_with_the_weight_of_their_soft_label():
    x = _batch(n=6, size=8, seed=1)
    labels = torch.arange(6)
    torch.manual_seed(2)
    y, targets = BatchMix(AugmentConfig(mixup=0.4), num_classes=6)(x, labels)
    lam = float(targets[0, 0])
    assert 0 < lam < 1 and torch.allclose(targets.diagonal(), torch.full((6,), lam))
    expected = (lam * x.float() + (1 - lam) * x.roll(1, 0).float()).round()
    assert (y.float() - expected).abs().max() <= 1  # uint8 rounding only


def test_mix_probability_zero_keeps_images_and_class_labels():
    x, labels = _batch(n=4), torch.tensor([0, 1, 2, 3])
    cfg = AugmentConfig(cutmix=1.0, mixup=0.2, mix_prob=0.0)
    assert not mixing_enabled(cfg) and mixing_enabled(AugmentConfig(cutmix=1.0))
    y, targets = BatchMix(cfg, num_classes=4)(x, labels)
    assert torch.equal(y, x) and torch.equal(targets, labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(mixup=-1.0), "augment.mixup"), (dict(mix_prob=1.5), "augment.mix_prob")],
)
def test_bad_mix_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**kwargs)
