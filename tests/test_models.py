"""Behaviour every model must have (timm style: one test swept over every registered model type)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIGS, tiny_config, tiny_model
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel, AutoModelForImageToImage

import modeling
from modeling import RestorationInputError

REPO_ROOT = Path(__file__).resolve().parents[1]


def forward_kwargs(model_type: str, batch: int) -> dict:
    return {}


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (24, 16)])
def test_any_size_in_same_size_out(model_type, size):
    model = tiny_model(model_type)
    pixel_values = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(pixel_values, **forward_kwargs(model_type, 2))
    assert out.reconstruction.shape == pixel_values.shape
    assert torch.isfinite(out.reconstruction).all()


def test_large_odd_size():
    """Padding/cropping lives in the shared base class; one model is enough for the big odd size."""
    model_type = "restormer"
    model = tiny_model(model_type)
    pixel_values = torch.rand(1, 3, 513, 1025)
    with torch.no_grad():
        restored = model(pixel_values, **forward_kwargs(model_type, 1)).reconstruction
    assert restored.shape == (1, 3, 513, 1025)


def test_padding_does_not_change_divisible_inputs(model_type):
    """The model pads internally; an input on its multiple (8; CPL 16, as its official test script pads) must be
    processed exactly as the bare network: the network's first layer receives the input itself, unpadded, and
    other sizes only up to the next multiple."""
    model = tiny_model(model_type)
    multiple = model.config.size_multiple
    assert multiple == (16 if model_type == "cpl" else 8)
    network_inputs = []  # what the U-Net's patch embedding (its first layer) is given, call by call
    model.unet.patch_embed.register_forward_pre_hook(lambda module, args: network_inputs.append(args[0]))
    pixel_values = torch.rand(1, 3, 16, 32)
    assert torch.equal(model.pad_to_multiple(pixel_values), pixel_values)
    with torch.no_grad():
        restored = model(pixel_values, **forward_kwargs(model_type, 1)).reconstruction
        network_inputs_divisible = list(network_inputs)
        network_inputs.clear()
        odd = torch.rand(1, 3, 17, 33)
        model(odd, **forward_kwargs(model_type, 1))
    assert restored.shape == pixel_values.shape
    assert network_inputs_divisible and all(torch.equal(seen, pixel_values) for seen in network_inputs_divisible)
    # Reflected at the bottom and right (the default pad_mode, as the official test scripts pad), not zeros.
    assert model.config.pad_mode == "reflect"
    reflected = F.pad(odd, (0, (-33) % multiple, 0, (-17) % multiple), mode="reflect")
    assert network_inputs and all(torch.equal(seen, reflected) for seen in network_inputs)


def test_loss_and_return_dict_false(model_type):
    model = tiny_model(model_type).train()
    pixel_values, labels = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = model(pixel_values, labels=labels, **forward_kwargs(model_type, 2))
    assert out.loss.ndim == 0 and out.loss.item() > 0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum().item() > 0 for g in grads) > 0.9 * len(grads)
    # Compared in eval mode: DPPD samples its prompts in training, so only eval outputs are deterministic.
    out = model.eval()(pixel_values, labels=labels, **forward_kwargs(model_type, 2))
    as_tuple = model(pixel_values, labels=labels, return_dict=False, **forward_kwargs(model_type, 2))
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(as_tuple[1], out.reconstruction, atol=1e-6, rtol=0)
    no_labels = model(pixel_values, return_dict=False, **forward_kwargs(model_type, 2))
    torch.testing.assert_close(no_labels[0], out.reconstruction, atol=1e-6, rtol=0)


def _assert_outputs_equal(actual, expected) -> None:
    assert type(actual) is type(expected)
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_outputs_equal(actual[key], expected[key])
    elif isinstance(expected, tuple):
        assert len(actual) == len(expected)
        for actual_item, expected_item in zip(actual, expected):
            _assert_outputs_equal(actual_item, expected_item)
    else:
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "model_type, options",
    [(model_type, {}) for model_type in sorted(TINY_CONFIGS)] + [("pip", {"decoder_prompts": True})],
)
def test_return_dict_false_is_the_outputs_to_tuple(model_type, options):
    """The transformers contract: the tuple holds every field of the ModelOutput that is set, in field order.
    PIP with decoder prompts used to leave its `prompt_weights` out of the tuple."""
    model = tiny_model(model_type, **options)
    pixel_values, labels = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        for extra in ({}, {"labels": labels}):
            as_dict = model(pixel_values, **extra)
            as_tuple = model(pixel_values, return_dict=False, **extra)
            assert isinstance(as_tuple, tuple)
            _assert_outputs_equal(as_tuple, as_dict.to_tuple())
    if options:
        assert len(as_dict.prompt_weights) == 3


@pytest.mark.parametrize("model_type", ["restormer", "promptir"])
def test_l1_loss_value_for_l1_models(model_type):
    model = tiny_model(model_type)
    pixel_values, labels = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    out = model(pixel_values, labels=labels)
    expected = (out.reconstruction - labels).abs().mean()
    torch.testing.assert_close(out.loss, expected)


def test_gradient_checkpointing_gives_identical_gradients(model_type):
    pixel_values, labels = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    grads, block_calls = [], []
    for checkpointing in (False, True):
        model = tiny_model(model_type).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        calls = []
        model.unet.encoder_level1[0].attn.register_forward_hook(lambda *args: calls.append(1))
        model(pixel_values, labels=labels, **forward_kwargs(model_type, 1)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        block_calls.append(len(calls))
    # Checkpointed blocks run again during backward; the gradients must not change.
    assert block_calls == [1, 2]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_save_load_round_trip(model_type, tmp_path):
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    pixel_values = torch.rand(1, 3, 20, 12)
    for auto_class in (AutoModel, AutoModelForImageToImage):
        loaded = auto_class.from_pretrained(tmp_path).eval()
        assert type(loaded) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(pixel_values, **forward_kwargs(model_type, 1)).reconstruction,
                model(pixel_values, **forward_kwargs(model_type, 1)).reconstruction,
                atol=0,
                rtol=0,
            )
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.to_dict()["dim"] == TINY_CONFIGS[model_type]["dim"]
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageToImage"}


def test_trust_remote_code_from_bare_folder_without_package(tmp_path):
    """Saved folders must carry their code: load every model type in a fresh process where `modeling` is
    not importable (one subprocess for all types keeps the suite fast)."""
    cases = {}
    for model_type in sorted(TINY_CONFIGS):
        folder = tmp_path / f"tiny-{model_type}"
        model = tiny_model(model_type)
        model.save_pretrained(folder)
        pixel_values = torch.rand(1, 3, 19, 23, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = model(pixel_values, **forward_kwargs(model_type, 1)).reconstruction
        cases[str(folder)] = {"x": pixel_values, "y": expected}
    torch.save(cases, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling"] = None  # even where the package is installed (CI), it must not be used
        import torch
        # As conftest: the expected outputs were computed on one thread, and a float sum split over other thread
        # counts rounds differently (CPL's 32 x 32 padded maps differed by 1.2e-7 on two).
        torch.set_num_threads(1)
        from transformers import AutoModel, AutoModelForImageToImage
        cases = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        for folder, io in cases.items():
            for auto in (AutoModel, AutoModelForImageToImage):
                m = auto.from_pretrained(folder, trust_remote_code=True).eval()
                assert m.__class__.__module__.startswith("transformers_modules"), m.__class__.__module__
                assert not any(name == "modeling" or name.startswith("modeling.") for name in sys.modules
                               if sys.modules[name] is not None), "the installed package was imported"
                with torch.no_grad():
                    y = m(io["x"]).reconstruction
                assert torch.equal(y, io["y"]), (folder, (y - io["y"]).abs().max())
            print("REMOTE_OK", folder)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.count("REMOTE_OK") == len(TINY_CONFIGS), result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.full((1, 3, 8, 8), float("inf")), "NaN or infinite"),
        (torch.rand(1, 4, 8, 8), "4 channels"),
        (torch.rand(3, 8, 8), "shape"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floating-point"),
        (torch.rand(1, 3, 0, 8), "empty"),
    ],
)
def test_bad_pixel_values_raise_clear_errors(model_type, bad, message):
    model = tiny_model(model_type)
    with pytest.raises(RestorationInputError, match=message):
        model(bad, **forward_kwargs(model_type, bad.shape[0] if bad.ndim == 4 else 1))


@pytest.mark.parametrize(
    "bad, message",
    [
        ((torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), "floating-point"),
        (torch.rand(1, 3, 8, 8).index_fill_(2, torch.tensor([3]), float("nan")), "NaN or infinite"),
        (torch.rand(1, 3, 8, 8).index_fill_(3, torch.tensor([0]), float("inf")), "NaN or infinite"),
    ],
    ids=["uint8", "nan", "inf"],
)
def test_bad_labels_raise_clear_errors(bad, message):
    """uint8 labels used to be cast to 0-255 floats (a loss about 255x too large) and NaN labels gave a NaN loss,
    both silently; the loss is shared by every model, so one model checks it."""
    model = tiny_model("restormer")
    with pytest.raises(RestorationInputError, match=message):
        model(torch.rand(1, 3, 8, 8), labels=bad)


def test_mismatched_labels_raise(model_type):
    model = tiny_model(model_type)
    with pytest.raises(RestorationInputError, match="labels"):
        model(torch.rand(1, 3, 8, 8), labels=torch.rand(1, 3, 8, 9), **forward_kwargs(model_type, 1))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_blocks=[1, 1, 1]), "num_blocks must list 4"),
        (dict(heads=[1, 2, 4]), "heads must list 4"),
        (dict(dim=8, heads=[1, 3, 1, 1]), "not divisible by heads"),
        (dict(layer_norm_type="Batch"), "layer_norm_type"),
        (dict(in_channels=4), "in_channels"),
        (dict(inference_tile=4), "inference_tile must be None or an integer of at least 8"),
        (dict(inference_tile=64.0), "inference_tile"),
    ],
)
def test_wrong_config_raises_clear_error(model_type, overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(model_type, **overrides)


def test_every_registered_model_is_tested():
    assert set(TINY_CONFIGS) == set(modeling.MODEL_CLASSES)


@pytest.mark.parametrize("layer_norm_type", ["WithBias", "BiasFree"])
def test_channels_last_gives_the_nchw_output_and_gradients(model_type, layer_norm_type):
    """The CPU fast path feeds channels-last maps (and may hold channels-last weights): every block must compute
    the same function in that layout, forward and backward."""
    overrides = {"layer_norm_type": layer_norm_type}
    pixel_values, labels = torch.rand(2, 3, 24, 40), torch.rand(2, 3, 24, 40)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = tiny_model(model_type, **overrides).train().to(memory_format=layout)
        torch.manual_seed(0)  # DPPD samples its prompts in training
        out = model(pixel_values.contiguous(memory_format=layout), labels=labels, **forward_kwargs(model_type, 2))
        out.loss.backward()
        with torch.no_grad():
            restored = model.eval()(pixel_values.contiguous(memory_format=layout)).reconstruction
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((restored, out.loss.detach(), grads))
    (nchw, nchw_loss, nchw_grads), (last, last_loss, last_grads) = results
    torch.testing.assert_close(last, nchw, atol=1e-5, rtol=0)
    torch.testing.assert_close(last_loss, nchw_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last_grads, nchw_grads, atol=1e-5, rtol=1e-4)


def test_compiled_transformer_blocks_trace_as_whole_graphs_and_compute_the_same(model_type):
    """Regional compilation (train.py's and the benchmarks' GPU fast path): every TransformerBlock compiles as one
    graph (`fullgraph=True` raises on any graph break), blocks of one width share their compiled code, outputs,
    loss and gradients match eager, and the state_dict keys do not change."""
    from torch._dynamo.testing import CompileCounter

    from modeling.restormer_blocks import TransformerBlock

    torch._dynamo.reset()
    pixel_values, labels = torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24)
    counter = CompileCounter()
    results = []
    for compiled in (False, True):
        model = tiny_model(model_type).train()
        keys = list(model.state_dict())
        blocks = [module for module in model.modules() if isinstance(module, TransformerBlock)]
        if compiled:
            assert model.compile_transformer_blocks(backend=counter, fullgraph=True) == len(blocks) > 1
            assert list(model.state_dict()) == keys
        torch.manual_seed(0)  # DPPD samples its prompts in training
        out = model(pixel_values, labels=labels, **forward_kwargs(model_type, 2))
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.reconstruction.detach(), out.loss.detach(), grads))
    # Each block ran compiled code; graphs were built per distinct (width, size), not per block.
    assert 1 <= counter.frame_count < len(blocks)
    (eager, eager_loss, eager_grads), (fast, fast_loss, fast_grads) = results
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_loss, eager_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast_grads, eager_grads, atol=1e-5, rtol=1e-4)


def test_heads_of_a_channels_last_map_are_views_with_the_nchw_values():
    from modeling.restormer_blocks import ChannelLayerNorm, channels_innermost, merge_heads, split_heads

    qkv = torch.rand(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
    query = qkv.chunk(3, dim=1)[0]  # a channel slice: channels innermost, but not channels-last contiguous
    assert channels_innermost(query) and not channels_innermost(query.contiguous())
    heads = split_heads(query, 2)
    assert heads.shape == (2, 2, 4, 35) and heads.data_ptr() == query.data_ptr()  # a view, no copy
    torch.testing.assert_close(heads, query.contiguous().reshape(2, 2, 4, 35), atol=0, rtol=0)
    torch.testing.assert_close(merge_heads(heads, 5, 7, channels_last=True), query, atol=0, rtol=0)
    attended = heads @ torch.rand(2, 2, 35, 35)  # what attention returns: dense (B, heads, C / heads, H * W)
    merged = merge_heads(attended, 5, 7, channels_last=True)
    assert merged.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(merged, merge_heads(attended, 5, 7, channels_last=False), atol=0, rtol=0)
    # A 1x1 map is both layouts at once; it takes the NCHW path.
    assert not channels_innermost(torch.rand(1, 8, 1, 1).contiguous(memory_format=torch.channels_last))
    for kind in ("WithBias", "BiasFree"):
        norm = ChannelLayerNorm(8, kind)
        torch.nn.init.normal_(norm.weight)
        if norm.bias is not None:
            torch.nn.init.normal_(norm.bias)
        features = torch.randn(2, 8, 6, 5) * 3 + 1
        last = norm(features.contiguous(memory_format=torch.channels_last))
        assert last.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(last, norm(features), atol=1e-5, rtol=1e-5)


def test_attention_and_resampling_run_in_fp32_in_cpu_inference_under_autocast():
    """In eval mode under CPU bf16 autocast, MDTA, the patch embedding and the down/upsampling convolutions compute
    in fp32: exactly their fp32 forward of the same input. In training mode, with the switch off, and for the other
    layers (the feed-forward here) autocast applies as usual."""
    from modeling import restormer_blocks as blocks

    torch.manual_seed(0)
    cases = [
        (blocks.MultiDconvHeadTransposedAttention(16, 2, bias=False), torch.rand(1, 16, 12, 10)),
        (blocks.OverlapPatchEmbed(3, 16), torch.rand(1, 3, 12, 10)),
        (blocks.Downsample(16), torch.rand(1, 16, 12, 10)),
        (blocks.Upsample(16), torch.rand(1, 16, 12, 10)),
    ]
    feed_forward = blocks.GatedDconvFeedForward(16, 2.66, bias=False).eval()
    for module, hidden in cases:
        hidden = hidden.bfloat16()  # what an autocast layer before it hands on
        module.eval()
        reference = module(hidden.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inference = module(hidden)
            assert feed_forward(torch.rand(1, 16, 6, 5)).dtype == torch.bfloat16
            module.train()
            training = module(hidden)
            module.eval()
            blocks.set_fp32_layers_in_cpu_inference(False)
            try:
                switched_off = module(hidden)
            finally:
                blocks.set_fp32_layers_in_cpu_inference(True)
        assert inference.dtype == torch.float32 and torch.equal(inference, reference), type(module).__name__
        assert training.dtype == torch.bfloat16 and switched_off.dtype == torch.bfloat16
        assert 0 < (switched_off.float() - reference).abs().max() < 0.1


def test_fp32_attention_and_resampling_bring_bf16_restoration_closer_to_fp32():
    """Through `restore()` on a tiny PIP: the default bf16 path (attention and resampling in fp32) differs from fp32
    by less than bf16 autocast in every layer, and by bf16 rounding (not garbage) either way."""
    from conftest import smooth_image

    from modeling import restore
    from modeling.restormer_blocks import set_fp32_layers_in_cpu_inference

    model = tiny_model("pip", seed=1)
    image = smooth_image(48, 40).astype("float32") / 255
    plain = restore(image, model, dtype="fp32", degradation="noise")
    default_bf16 = restore(image, model, dtype="bf16", degradation="noise")
    set_fp32_layers_in_cpu_inference(False)
    try:
        all_bf16 = restore(image, model, dtype="bf16", degradation="noise")
    finally:
        set_fp32_layers_in_cpu_inference(True)
    default_error = float(abs(default_bf16 - plain).mean())
    all_bf16_error = float(abs(all_bf16 - plain).mean())
    assert 0 < default_error < all_bf16_error < 0.05, (default_error, all_bf16_error)

    # Weights already in bf16 have no fp32 to keep: those layers run in the weights' bf16, as without autocast.
    model.to(torch.bfloat16)
    in_bf16_weights = restore(image, model, dtype="bf16", degradation="noise")
    assert in_bf16_weights.dtype == plain.dtype
    assert (in_bf16_weights == restore(image, model, degradation="noise")).all()


def test_training_forward_is_one_graph_without_host_syncs(model_type):
    """torch.compile sees a training forward (loss included, channels-last, bf16 autocast) as one graph: the input
    checks that read values back to the host step aside under compile, since a graph break there would split the
    model and a host sync cannot live in a CUDA graph. Called eagerly, the model still refuses NaN inputs."""
    from modeling.errors import RestorationInputError

    model = tiny_model(model_type).train().to(memory_format=torch.channels_last)
    degraded = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    clean = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    kwargs = {"degradation_labels": torch.tensor([0, 1])} if model.accepts_degradation_labels else {}

    def training_loss(degraded, clean):
        return model(pixel_values=degraded, labels=clean, **kwargs).loss

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(training_loss)(degraded, clean)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    degraded[0, 0, 0, 0] = float("nan")
    with pytest.raises(RestorationInputError, match="NaN"):
        training_loss(degraded, clean)


@pytest.mark.parametrize("model_type, overrides, message", [
    ("cpl", dict(prompt_top_k=1.0), "prompt_top_k must be an integer of at least 1, got 1.0"),
    ("promptir", dict(prompt_len=5.0), "prompt_len must be an integer of at least 1, got 5.0"),
    ("promptir", dict(prompt_sizes=[8.0, 4, 4]), "prompt_sizes must be an integer of at least 1, got 8.0"),
    ("pip", dict(num_degradations=5.0), "num_degradations must be an integer of at least 1, got 5.0"),
    ("pip", dict(prompt_interaction_heads=2.0), "prompt_interaction_heads must be an integer of at least 1"),
    ("pip", dict(degradation_estimator_window=12.5), "degradation_estimator_window must be None or a side"),
    ("pip", dict(decoder_prompts=True, decoder_prompt_top_k=1.0), "decoder_prompt_top_k must be an integer"),
    ("cpl", dict(contrastive_num_negatives=1.5), "contrastive_num_negatives must be an integer of at least 1"),
])
def test_method_fields_that_are_counts_refuse_floats(model_type, overrides, message):
    """A float where a count belongs used to pass the config and fail later, deep in torch (topk, empty, slicing)."""
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(model_type, **overrides)


def test_an_input_in_another_dtype_than_the_weights_is_named(model_type):
    """Outside autocast every layer needs the weights' dtype: a float64 or bf16 input used to stop in the first
    convolution with torch's message; under autocast a bf16 input is fine."""
    model = tiny_model(model_type)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(RestorationInputError, match=rf"pixel_values is {dtype} but the model's weights are "
                                                        r"torch.float32"):
            model(pixel_values=torch.rand(1, 3, 16, 16, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(pixel_values=torch.rand(1, 3, 16, 16, dtype=torch.bfloat16)).reconstruction.shape == (1, 3, 16, 16)


def test_boolean_label_tensors_are_refused():
    """True/False are refused as labels in every other form; a bool tensor used to become classes 1 and 0."""
    model = tiny_model("pip")
    with pytest.raises(RestorationInputError, match="not booleans"):
        model(pixel_values=torch.rand(2, 3, 16, 16), degradation_labels=torch.tensor([True, False]))


def readme_trainer_label_names() -> list[str]:
    """The ``label_names`` the README's "With `transformers.Trainer`" recipe passes to ``TrainingArguments``."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.partition("### With `transformers.Trainer`")[2].partition("\n## ")[0]
    match = re.search(r"TrainingArguments\([^)]*label_names=(\[[^\]]*\])", section)
    assert match, "README has no Trainer recipe with label_names"
    return ast.literal_eval(match.group(1))


class _RestorationPairs(torch.utils.data.Dataset):
    """Five (pixel_values, labels) pairs, with degradation label indices when ``with_degradation``."""

    def __init__(self, with_degradation: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        self.noisy, self.clean = torch.rand(2, 5, 3, 16, 16, generator=generator)
        self.with_degradation = with_degradation

    def __len__(self) -> int:
        return len(self.noisy)

    def __getitem__(self, index: int) -> dict:
        item = {"pixel_values": self.noisy[index], "labels": self.clean[index]}
        if self.with_degradation:
            item["degradation_labels"] = index % 3
        return item


@pytest.mark.parametrize("model_type", ["pip", "dppd"])
def test_trainer_recipe_of_the_readme_evaluates_label_taking_models(model_type, tmp_path):
    """transformers takes every forward argument named *label* for a target, ``degradation_labels`` too: without
    the README's ``label_names``, evaluate() lost eval_loss and compute_metrics (or got a tuple of label_ids)."""
    from transformers import Trainer, TrainingArguments

    def arguments(label_names):
        return TrainingArguments(tmp_path, per_device_eval_batch_size=2, report_to=[], use_cpu=True,
                                 label_names=label_names)

    def clean_psnr(prediction):
        error = ((prediction.predictions[0] - prediction.label_ids) ** 2).mean()
        return {"psnr": float(-10 * np.log10(error))}

    # The reason the README gives: by default the label-free evaluation has no loss.
    default = Trainer(model=tiny_model(model_type), args=arguments(None), compute_metrics=clean_psnr)
    assert default.label_names == ["degradation_labels", "labels"]
    assert "eval_loss" not in default.evaluate(_RestorationPairs(with_degradation=False))

    for with_degradation in (False, True):
        model = tiny_model(model_type)
        trainer = Trainer(model=model, args=arguments(readme_trainer_label_names()), compute_metrics=clean_psnr)
        dataset = _RestorationPairs(with_degradation)
        metrics = trainer.evaluate(dataset)
        result = trainer.predict(dataset)
        batch = {"pixel_values": dataset.noisy, "labels": dataset.clean}
        if with_degradation:
            batch["degradation_labels"] = torch.arange(5) % 3
        with torch.no_grad():
            expected = model.eval()(**batch)
            # The Trainer's loss is the mean over images of their batch's loss: batches of 2, 2 and 1.
            batch_losses = [model(**{key: value[start:start + 2] for key, value in batch.items()}).loss
                            for start in (0, 2, 4)]
        expected_loss = (2 * batch_losses[0] + 2 * batch_losses[1] + batch_losses[2]).item() / 5
        assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert result.metrics["test_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert result.predictions[0].shape == (5, 3, 16, 16) and result.label_ids.shape == (5, 3, 16, 16)
        np.testing.assert_allclose(result.predictions[0], expected.reconstruction.numpy(), atol=1e-6)
        np.testing.assert_array_equal(result.label_ids, dataset.clean.numpy())
        clean = expected.reconstruction.numpy()
        assert metrics["eval_psnr"] == pytest.approx(-10 * np.log10(((clean - dataset.clean.numpy()) ** 2).mean()),
                                                     rel=1e-5)
        if with_degradation:  # the labels reached the model: its weights are their one-hots
            np.testing.assert_array_equal(result.predictions[1], np.eye(5, dtype=np.float32)[np.arange(5) % 3])
