"""Tests of the model registry and safe weight loading (tiny inputs, no training)."""

from __future__ import annotations

import pickle
import urllib.error
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from satcompress.models import (
    CLIP_MEAN_STD,
    IMAGENET_MEAN_STD,
    ModelInfo,
    UnknownModelError,
    WeightsError,
    create_model,
    list_models,
    load_weights,
    model_info,
    register_model,
    save_weights,
)
from satcompress.models import registry as _registry

SHARED_RESNET18 = Path(__file__).parents[2] / "shared" / "models" / "resnet18_eurosat64.safetensors"

# name, kwargs, input side. Heavy models run only with -m slow.
LIGHT = [
    ("test_cnn", {}, 16),
    ("test_resnet", {}, 16),
    ("test_mobilenet", {}, 16),
    ("test_vit", {}, 32),
    ("resnet9", {"width": 8}, 16),
    ("resnet18", {}, 32),
    ("mobilenet_v2", {"width_mult": 0.35}, 32),
    ("vit_tiny_patch16", {"img_size": 32}, 32),
    ("vit_small_patch16", {"img_size": 32, "patch_size": 8}, 32),
]
HEAVY = [
    ("efficientnet_v2_s", {}, 32),
    ("vit_base_patch16", {"img_size": 32}, 32),
    ("clip_vit_b32", {"image_size": 32}, 32),
]


def _logits(model: nn.Module, side: int = 16, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, side, side, generator=gen)
    with torch.no_grad():
        return model.eval()(x)


def _randomize_buffers(model: nn.Module) -> nn.Module:
    """Give batch-norm statistics non-default values so round trips check them too."""
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model


# --- registry ---------------------------------------------------------------------------------


def test_every_registered_name_is_tested() -> None:
    assert sorted(n for n, _, _ in LIGHT + HEAVY) == list_models()


@pytest.mark.parametrize(("name", "kwargs", "side"), LIGHT)
def test_light_models_build_and_return_logits(name: str, kwargs: dict, side: int) -> None:
    model = create_model(name, 3, **kwargs)
    assert isinstance(model, nn.Module)
    out = _logits(model, side)
    assert out.shape == (2, 3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs", "side"), HEAVY)
def test_heavy_models_build_and_return_logits(name: str, kwargs: dict, side: int) -> None:
    out = _logits(create_model(name, 3, **kwargs), side, batch=1)
    assert out.shape == (1, 3)


def test_clip_builds_offline_with_visual_and_head() -> None:
    model = create_model("clip_vit_b32", 4, image_size=32)
    assert isinstance(model.visual, nn.Module) and isinstance(model.head, nn.Linear)
    assert model.head.in_features == 512
    assert _logits(model, 32, batch=1).shape == (1, 4)


def test_resnet9_any_input_size() -> None:
    model = create_model("resnet9", 5, width=4)
    assert _logits(model, 64).shape == (2, 5)
    assert _logits(model, 256, batch=1).shape == (1, 5)
    full = create_model("resnet9", 10)
    assert 6_000_000 < sum(p.numel() for p in full.parameters()) < 7_000_000
    unpooled = create_model("resnet9", 5, width=4, stem_pool=False)
    assert _logits(unpooled, 8, batch=1).shape == (1, 5)


def test_resnet18_zero_init_residual_starts_each_block_as_identity() -> None:
    zeroed = create_model("resnet18", 4, zero_init_residual=True)
    plain = create_model("resnet18", 4)
    blocks = [m for m in zeroed.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8 and all(b.bn2.weight.abs().sum() == 0 for b in blocks)
    assert all(b.bn2.weight.abs().sum() > 0 for b in plain.modules() if hasattr(b, "bn2"))


def test_resnet9_stem_pool_and_logit_scale() -> None:
    torch.manual_seed(0)
    scaled = create_model("resnet9", 3, width=4).eval()
    plain = create_model("resnet9", 3, width=4, logit_scale=1.0).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), 0.125 * plain(x))
        features = scaled.prep(x)
    assert features.shape[-2:] == (16, 16)
    unpooled = create_model("resnet9", 3, width=4, stem_pool=False)
    assert unpooled.prep(x).shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="logit_scale"):
        create_model("resnet9", 3, logit_scale=0.0)


def test_every_fixed_size_model_takes_its_size_keyword() -> None:
    """The registry's size keyword is a parameter of the builder: a model built at 64 px is
    trained and exported at 64 px, not at its default side."""
    import inspect

    from satcompress.models.registry import _REGISTRY

    fixed = {name: e for name, e in _REGISTRY.items() if e.info.default_image_size is not None}
    assert {"clip_vit_b32", "vit_tiny_patch16", "test_vit"} <= set(fixed)
    for name, entry in fixed.items():
        assert entry.info.size_kwarg in inspect.signature(entry.builder).parameters, name
        assert entry.info.input_side({entry.info.size_kwarg: 64}) == 64


def test_vit_patch_size_and_img_size_overrides() -> None:
    model = create_model("test_vit", 2, img_size=64, patch_size=16)
    assert model.patch_embed.proj.kernel_size == (16, 16)
    assert _logits(model, 64, batch=1).shape == (1, 2)
    dyn = create_model("test_vit", 2, dynamic_img_size=True)
    assert _logits(dyn, 48, batch=1).shape == (1, 2)
    with pytest.raises(ValueError, match="multiple"):
        create_model("vit_tiny_patch16", 2, img_size=60)


def test_tiny_models_are_tiny() -> None:
    assert sum(p.numel() for p in create_model("test_cnn", 10).parameters()) < 50_000
    resnet = create_model("test_resnet", 10)
    assert resnet.layer2.downsample is not None  # a projection skip as well as identity skips


def test_mobilenet_width_changes_param_count() -> None:
    def count(width: float) -> int:
        return sum(
            p.numel() for p in create_model("mobilenet_v2", 10, width_mult=width).parameters()
        )

    assert count(0.5) < count(1.0)


def test_list_models_pattern() -> None:
    assert list_models("test_*") == ["test_cnn", "test_mobilenet", "test_resnet", "test_vit"]
    assert list_models("vit_*_patch16") == [
        "vit_base_patch16",
        "vit_small_patch16",
        "vit_tiny_patch16",
    ]
    assert list_models("nothing*") == []
    assert list_models() == sorted(list_models())
    assert not any(name.startswith("timm/") for name in list_models())


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match="resnet18") as info:
        create_model("resnet81", 10)
    assert "list_models()" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, UnknownModelError)
    with pytest.raises(ValueError, match="mobilenet_v2"):
        model_info("mobilenet_v3")


def test_unknown_timm_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match="resnet10t"):
        create_model("timm/resnet10q", 10)


def test_bad_arguments_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="'width_mult'.*accepts \\['zero_init_residual'\\]"):
        create_model("resnet18", 10, width_mult=0.5)
    with pytest.raises(ValueError, match="'bogus'.*'width_mult'"):
        create_model("mobilenet_v2", 10, bogus=1)
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        create_model("mobilenet_v2", 10, width_mult=0)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("test_cnn", 0)
    with pytest.raises(ValueError, match="not both"):
        create_model("test_cnn", 3, pretrained=True, weights="x.safetensors")
    with pytest.raises(ValueError, match="timm/resnet10t"):
        create_model("timm/resnet10t", 10, bogus_kwarg=1)


def test_timm_prefix_builds_any_timm_model() -> None:
    model = create_model("timm/resnet10t", 4)
    assert _logits(model, 32).shape == (2, 4)
    info = model_info("timm/resnet10t")
    assert info.family == "cnn" and info.default_image_size is None


def test_model_info() -> None:
    from timm.models import get_pretrained_cfg

    clip_info = model_info("clip_vit_b32")
    assert isinstance(clip_info, ModelInfo)
    assert (clip_info.pretrained_mean, clip_info.pretrained_std) == CLIP_MEAN_STD
    assert clip_info.family == "clip" and clip_info.default_image_size == 224
    vit_info = model_info("vit_small_patch16")
    cfg = get_pretrained_cfg("vit_small_patch16_224")
    assert vit_info.pretrained_mean == cfg.mean and vit_info.pretrained_std == cfg.std
    assert (vit_info.family, vit_info.default_image_size) == ("vit", 224)
    r18 = model_info("resnet18")
    assert (r18.pretrained_mean, r18.pretrained_std) == IMAGENET_MEAN_STD
    assert r18.default_image_size is None and r18.description
    assert model_info("test_vit").default_image_size == 32
    assert model_info("timm/vit_tiny_patch16_224").family == "vit"


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_model("my_linear", family="test", image_size=8)
    def my_linear(num_classes: int, pretrained: bool = False) -> nn.Module:
        """Flatten + linear."""
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

    assert "my_linear" in list_models()
    assert model_info("my_linear").description == "Flatten + linear."
    assert _logits(create_model("my_linear", 2), 8).shape == (2, 2)
    with pytest.raises(ValueError, match="already registered"):
        register_model("my_linear")(my_linear)
    with pytest.raises(ValueError, match="family"):
        register_model("other", family="rnn")


# --- weights ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _randomize_buffers(create_model("test_resnet", 3))
    path = save_weights(model, tmp_path / "sub" / "m.safetensors")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["m.safetensors"]
    loaded = create_model("test_resnet", 3, weights=path)
    assert torch.equal(_logits(model), _logits(loaded))


def test_save_handles_tied_and_channels_last_tensors(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 4), nn.Linear(4, 4))
    model[3].weight = model[2].weight  # tied
    model = model.to(memory_format=torch.channels_last)
    save_weights(model, tmp_path / "tied.safetensors")
    state = safetensors.torch.load_file(tmp_path / "tied.safetensors")
    assert torch.equal(state["2.weight"], state["3.weight"])
    assert torch.equal(state["0.weight"], model[0].weight.detach())


def test_fp16_safetensors_load(tmp_path: Path) -> None:
    model = _randomize_buffers(create_model("test_cnn", 4))
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    safetensors.torch.save_file(half, tmp_path / "half.safetensors")
    loaded = create_model("test_cnn", 4, weights=tmp_path / "half.safetensors")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.allclose(_logits(model), _logits(loaded), atol=1e-2, rtol=1e-2)


def test_lightning_checkpoint_with_model_prefix(tmp_path: Path) -> None:
    model = _randomize_buffers(create_model("test_cnn", 4))
    teacher = create_model("test_resnet", 4)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    ckpt = {
        "epoch": 3,
        "global_step": 30,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": state,
        "hyper_parameters": {"lr": 0.1, "name": "test_cnn"},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = create_model("test_cnn", 4, weights=tmp_path / "last.ckpt")
    assert torch.equal(_logits(model), _logits(loaded))


def test_plain_pt_state_dict(tmp_path: Path) -> None:
    model = create_model("test_vit", 3)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    loaded = load_weights(create_model("test_vit", 3), tmp_path / "vit.pth")
    assert torch.equal(_logits(model, 32), _logits(loaded, 32))


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "payload"


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_pickle_with_arbitrary_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": torch.zeros(2), "payload": _Payload()}, handle, protocol=2)
    torch.save(
        {"state_dict": {"fc.weight": torch.zeros(2)}, "obj": _Payload()}, tmp_path / "e.ckpt"
    )
    for bad in (path, tmp_path / "e.ckpt"):
        with pytest.raises(WeightsError, match="Refusing to load"):
            load_weights(create_model("test_cnn", 2), bad)
    assert _UNPICKLED == []


def test_class_count_mismatch_names_both_counts(tmp_path: Path) -> None:
    path = save_weights(create_model("test_cnn", 10), tmp_path / "ten.safetensors")
    with pytest.raises(WeightsError, match=r"10 classes.*21 classes"):
        create_model("test_cnn", 21, weights=path)
    # Non-strict loading keeps the backbone and the model's own classifier.
    model = create_model("test_cnn", 21)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_weights(model, path, strict=False)
    assert any("shape differs" in str(w.message) for w in caught)
    assert model[-1].out_features == 21


def test_bad_files_raise_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_model("test_cnn", 2, weights=tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="safetensors"):
        create_model("test_cnn", 2, weights=garbage)
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 nonsense")
    with pytest.raises(WeightsError, match="garbage.pt"):
        create_model("test_cnn", 2, weights=tmp_path / "garbage.pt")
    other = save_weights(create_model("test_resnet", 2), tmp_path / "resnet.safetensors")
    with pytest.raises(WeightsError, match="missing key"):
        create_model("test_cnn", 2, weights=other)
    torch.save({"epoch": 1}, tmp_path / "nostate.ckpt")
    with pytest.raises(WeightsError, match="no state_dict"):
        create_model("test_cnn", 2, weights=tmp_path / "nostate.ckpt")


def test_shared_resnet18_loads_strictly() -> None:
    if not SHARED_RESNET18.is_file():
        pytest.skip(f"{SHARED_RESNET18} not present")
    model = create_model("resnet18", 10, weights=SHARED_RESNET18)
    assert model.fc.out_features == 10 and model.fc.weight.dtype == torch.float32
    out = _logits(model, 64, batch=1)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    with pytest.raises(WeightsError, match="10 classes.*21 classes"):
        create_model("resnet18", 21, weights=SHARED_RESNET18)


# --- pretrained (offline) ---------------------------------------------------------------------


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _assert_download_error(err: pytest.ExceptionInfo, name: str) -> None:
    message = str(err.value)
    assert name in message and "--weights" in message and "download" in message.lower()


def test_torchvision_pretrained_download_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", _offline)
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", 10, pretrained=True)
    _assert_download_error(err, "resnet18")


def test_timm_pretrained_download_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as timm_builder

    for fn in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(timm_builder, fn, _offline)
    with pytest.raises(WeightsError) as err:
        create_model("timm/resnet10t", 10, pretrained=True)
    _assert_download_error(err, "timm/resnet10t")


def test_clip_pretrained_download_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    monkeypatch.setattr(open_clip.factory, "download_pretrained", _offline)
    with pytest.raises(WeightsError) as err:
        create_model("clip_vit_b32", 10, pretrained=True)
    _assert_download_error(err, "clip_vit_b32")


def test_pretrained_unavailable_is_clear() -> None:
    with pytest.raises(WeightsError, match="width_mult=1.0"):
        create_model("mobilenet_v2", 10, pretrained=True, width_mult=0.5)
    with pytest.raises(WeightsError, match="no pretrained weights.*--weights"):
        create_model("test_cnn", 10, pretrained=True)


# --- export and memory format -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "side"), [("test_cnn", 16), ("test_vit", 32)])
def test_onnx_export_matches_torch(name: str, side: int, tmp_path: Path) -> None:
    model = create_model(name, 3).eval()
    x = torch.randn(2, 3, side, side)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, side, side)  # another batch size: the batch axis is dynamic
    (got,) = session.run(None, {"input": x3.numpy()})
    with torch.no_grad():
        want = model(x3)
    assert got.shape == (3, 3)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


class _AttentionNet(nn.Module):
    """Patches, ``nn.MultiheadAttention`` (as in the CLIP tower), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 16, 8, stride=8)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(tokens, tokens, tokens, need_weights=False)[0].mean(1))


def test_deployable_export_of_multihead_attention_runs_in_onnx_runtime(tmp_path: Path) -> None:
    from satcompress.models.deployable import export_onnx
    from satcompress.preprocess import InputSpec

    ort = pytest.importorskip("onnxruntime")
    model = _AttentionNet().eval()
    spec = InputSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = export_onnx(model, spec, (32, 32), tmp_path / "attn.onnx")
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        want = model((images.float() / 255 - 0.5) / 0.25)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


def test_multihead_attention_is_counted_like_its_split_twin() -> None:
    # the fused inference path counted as zero: the CLIP tower's MACs once rose when pruned
    from satcompress.models.attention import split_multihead_attention
    from satcompress.models.stats import count_macs

    model = _AttentionNet()
    split = _AttentionNet()
    split.load_state_dict(model.state_dict())
    assert split_multihead_attention(split)
    macs = count_macs(model, (32, 32))
    attention = 16 * 16 * 3 + 16 * 16 + 2 * 16 * 16  # qkv, proj, q@k and attn@v: 16 tokens
    assert macs == count_macs(split, (32, 32))
    assert macs == 16 * 3 * 64 * 16 + 16 * attention + 16 * 3  # patches, attention, head
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.slow
def test_dynamo_onnx_export_of_dynamic_size_vit(tmp_path: Path) -> None:
    # The TorchScript exporter (dynamo=False) bakes the position-embedding resampling of
    # dynamic_img_size ViTs into the graph; only the dynamo exporter keeps H and W dynamic.
    ort = pytest.importorskip("onnxruntime")
    model = create_model("test_vit", 3, dynamic_img_size=True).eval()
    batch, side = torch.export.Dim("batch"), torch.export.Dim("side", min=16, max=256)
    path = tmp_path / "vit_dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 3, 32, 32),),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch, 2: side, 3: side},),
        )
    x = torch.randn(1, 3, 48, 48)
    (got,) = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "kwargs", "side"), LIGHT[:4])
def test_channels_last(name: str, kwargs: dict, side: int) -> None:
    model = create_model(name, 3, **kwargs).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        want = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
