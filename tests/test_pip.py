"""PIP: official fidelity, the degradation-label interface, the label-free estimator, the paper's loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from huggingface_hub.errors import StrictDataclassClassValidationError

from modeling import PIPConfig, PIPForImageRestoration, RestorationInputError
from modeling.conversion import convert_pip

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = dict(keep_unused_official_modules=True, use_degradation_estimator=False)


def count_parameters(config: PIPConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in PIPForImageRestoration(config).parameters())


def test_official_parameter_count():
    assert count_parameters(PIPConfig(**OFFICIAL)) == 27_429_510
    # Without the three never-called official 1x1 convs (112,896 parameters):
    assert count_parameters(PIPConfig(use_degradation_estimator=False)) == 27_429_510 - 112_896
    # Our default adds the degradation estimator (15*48*128 + 128 + 128*5 + 5 parameters).
    assert count_parameters(PIPConfig()) == 27_316_614 + (720 * 128 + 128) + (128 * 5 + 5)


def test_pip_on_promptir_body_is_a_config_change():
    with torch.device("meta"):
        model = PIPForImageRestoration(PIPConfig(decoder_prompts=True, use_degradation_estimator=False))
    assert model.unet.latent_projection is None
    assert model.decoder_prompts is not None
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"unet", "skip_prompts", "decoder_prompts"}


def test_output_matches_official_code_slice():
    """Recorded by running the official PIPNet_Restormer_onskip_inter with our seed-0 weights (label: rain)."""
    torch.manual_seed(0)
    model = PIPForImageRestoration(PIPConfig(**OFFICIAL)).eval()
    pixel_values = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(pixel_values, degradation_labels="rain").reconstruction
    expected = torch.tensor(
        [[0.570666, 0.955286, 0.427333], [0.265742, 0.134317, 0.145176], [0.805978, 0.627798, 0.72435]]
    )
    torch.testing.assert_close(output[0, 0, :3, :3], expected, atol=1e-5, rtol=0)


def official_state_dict() -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / "official_keys_pip.json").read_text())
    generator = torch.Generator().manual_seed(5)
    return {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}


def test_converter_maps_all_612_official_keys(tmp_path):
    official = official_state_dict()
    assert len(official) == 612
    torch.save({"params": official, "epoch": 100}, tmp_path / "pip.pth")
    model = convert_pip.convert_pip_checkpoint(str(tmp_path / "pip.pth"))
    ours = model.state_dict()
    assert len(ours) == 612 - 9  # attn1..attn4 merged into one branch_weights vector at each of 3 levels
    torch.testing.assert_close(
        ours["skip_prompts.level3.prompt_in_prompt.degradation_prompts"], official["prompt3.detask_prompt_param"][0, :, :, 0, 0]
    )
    torch.testing.assert_close(
        ours["skip_prompts.level2.prompt_to_feature.attn.branch_weights"],
        torch.cat([official[f"low_prompt_interaction_level2.prompt_transformer_cross.attn.attn{i}"] for i in (1, 2, 3, 4)]),
    )
    torch.testing.assert_close(
        ours["skip_prompts.level1.prompt_in_prompt.prompt_interaction.norm_context.weight"],
        official["prompt1.LGM.norm12.body.weight"],
    )
    torch.testing.assert_close(ours["unet.latent_projection.weight"], official["chnl_reduce3.weight"])
    # Converted official models need labels: they have no estimator.
    with pytest.raises(RestorationInputError, match="pass degradation_labels"):
        model(torch.rand(1, 3, 16, 16))


def test_converter_can_add_an_estimator(tmp_path):
    torch.save({"params": official_state_dict()}, tmp_path / "pip.pth")
    model = convert_pip.convert_pip_checkpoint(str(tmp_path / "pip.pth"), with_degradation_estimator=True)
    assert model.degradation_estimator is not None
    out = model(torch.rand(1, 3, 16, 16))
    assert out.degradation_weights.shape == (1, 5)


@pytest.fixture(scope="module")
def model():
    return tiny_model("pip")


def test_label_free_path_uses_estimator_weights_summing_to_one(model):
    with torch.no_grad():
        out = model(torch.rand(3, 3, 16, 16))
    assert out.degradation_weights.shape == (3, 5)
    torch.testing.assert_close(out.degradation_weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(out.degradation_weights, out.degradation_logits.softmax(-1))


def test_labels_bypass_the_estimator(model):
    pixel_values = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        labelled = model(pixel_values, degradation_labels=["rain", 3])
        # Changing the estimator must not change a labelled result.
        for p in model.degradation_estimator.parameters():
            p.add_(1.0)
        relabelled = model(pixel_values, degradation_labels=["rain", 3])
        for p in model.degradation_estimator.parameters():
            p.sub_(1.0)
    expected = torch.zeros(2, 5)
    expected[0, 1] = expected[1, 3] = 1
    torch.testing.assert_close(labelled.degradation_weights, expected)
    torch.testing.assert_close(labelled.reconstruction, relabelled.reconstruction, atol=0, rtol=0)


def test_labels_change_the_restoration(model):
    pixel_values = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        noise = model(pixel_values, degradation_labels="noise").reconstruction
        rain = model(pixel_values, degradation_labels="rain").reconstruction
    assert (noise - rain).abs().max() > 1e-4


@pytest.mark.parametrize(
    "labels, row",
    [
        ("rain+haze", [0, 0.5, 0.5, 0, 0]),
        ("low+haze+rain", [0, 1 / 3, 1 / 3, 0, 1 / 3]),  # a three-part CDD-11 composite
        (("noise", "blur"), [0.5, 0, 0, 0.5, 0]),
        ("Low_Light", [0, 0, 0, 0, 1]),
        ("derain", [0, 1, 0, 0, 0]),
        (torch.tensor([2]), [0, 0, 1, 0, 0]),
        (torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2]]), [0.2] * 5),
    ],
)
def test_label_forms(model, labels, row):
    if isinstance(labels, tuple):
        labels = [labels]  # one pair for the single image
    weights = model.degradation_weights(labels, 1, "cpu")
    torch.testing.assert_close(weights, torch.tensor([row], dtype=torch.float32))


def test_mixed_labels_equal_the_mean_of_the_two_prompts(model):
    """The official mixture: mean of two one-hots, which is linear in the degradation-aware prompt."""
    pip = model.skip_prompts["level2"].prompt_in_prompt
    rain_haze = pip.degradation_aware_prompt(model.degradation_weights("rain+haze", 1, "cpu"))
    rain = pip.degradation_aware_prompt(model.degradation_weights("rain", 1, "cpu"))
    haze = pip.degradation_aware_prompt(model.degradation_weights("haze", 1, "cpu"))
    torch.testing.assert_close(rain_haze, (rain + haze) / 2)
    # Official 'mean' reduction divides the selected prompt by the number of classes.
    torch.testing.assert_close(rain[0], pip.degradation_prompts[1] / 5)


@pytest.mark.parametrize(
    "labels, message",
    [("snow", "unknown degradation 'snow'; valid names are noise, rain, haze, blur, low-light"),
     (7, "out of range"), (["rain"], "one label per image"), (torch.rand(2, 4), "shape")],
)
def test_bad_labels_raise_clear_errors(model, labels, message):
    with pytest.raises(RestorationInputError, match=message.replace("(", r"\(")):
        model(torch.rand(2, 3, 8, 8), degradation_labels=labels)


def test_loss_is_smooth_l1_plus_angle_regulariser_plus_estimator(model):
    pixel_values, clean = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = model(pixel_values, degradation_labels=["noise", "haze"], labels=clean)
    config = model.config
    pixel = F.smooth_l1_loss(out.reconstruction, clean)
    angle = 0.0
    for skip in model.skip_prompts.values():
        prompts = skip.prompt_in_prompt.degradation_prompts
        for i in range(5):
            for j in range(i + 1, 5):
                angle += F.relu(F.cosine_similarity(prompts[i], prompts[j], dim=0))
    angle = angle * config.prompt_angle_scale
    targets = torch.tensor([0, 2])
    ce = F.cross_entropy(out.degradation_logits, targets)
    expected = pixel + 0.002 * angle + config.degradation_estimator_loss_weight * ce
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-5)
    assert set(out.loss_terms) == {"pixel", "prompt_angle", "degradation_estimator"}
    # Without degradation labels there is no estimator target: no cross-entropy term.
    unlabelled = model(pixel_values, labels=clean)
    assert "degradation_estimator" not in unlabelled.loss_terms


def test_estimator_gradient_stops_at_the_encoder(model):
    """Training the estimator must not move the restoration path (detach_features=True by default)."""
    model.zero_grad()
    out = model(torch.rand(2, 3, 16, 16), degradation_labels=["rain", "blur"])
    F.cross_entropy(out.degradation_logits, torch.tensor([1, 3])).backward()
    assert model.degradation_estimator.classifier[0].weight.grad.abs().sum() > 0
    assert model.unet.patch_embed.proj.weight.grad is None
    model.zero_grad()


def test_config_rejects_inconsistent_names():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match="degradation_names lists 3 names for 5"):
        PIPConfig(degradation_names=["noise", "rain", "haze"])
    with pytest.raises(StrictDataclassClassValidationError, match="keep no channel"):
        PIPConfig(prompt_dims=[4, 4, 4], dim=8, heads=[1, 1, 4, 4])


def test_prompt_interaction_ffn_and_bias_are_pip_fields_not_backbone_ones():
    """The official block hard-codes expansion 2.66 and no bias whatever the backbone uses."""
    base = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], prompt_dims=[8, 8, 8],
                prompt_sizes=[4, 4, 4])
    model = PIPForImageRestoration(PIPConfig(**base, ffn_expansion_factor=4.0, bias=True))
    interaction = model.skip_prompts["level1"].prompt_in_prompt.prompt_interaction
    assert interaction.ffn.project_out.in_channels == int(8 * 2.66)
    assert interaction.attn.q.bias is None
    # The backbone's own blocks did take the backbone values.
    assert model.unet.encoder_level1[0].ffn.project_out.in_channels == int(8 * 4.0)
    custom = PIPForImageRestoration(
        PIPConfig(**base, prompt_interaction_ffn_expansion_factor=2.0, prompt_interaction_bias=True)
    )
    interaction = custom.skip_prompts["level1"].prompt_in_prompt.prompt_interaction
    assert interaction.ffn.project_out.in_channels == 16 and interaction.attn.q.bias is not None


def test_topm_selection_under_bf16_autocast_equals_fp32():
    torch.manual_seed(0)
    from modeling.modeling_pip import TopMCrossAttention

    attention = TopMCrossAttention(32, 2, False, [[1, 2], [2, 3], [3, 4], [4, 5]], 0.2)
    differing, differing_bf16_logits = 0, 0
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        feature = torch.randn(2, 32, 12, 12, generator=generator)
        prompt = torch.randn(2, 32, 12, 12, generator=generator)
        reference = attention.selected_channels(feature, prompt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = attention.selected_channels(feature, prompt)
            out_bf16 = attention(feature, prompt)
            # What the attention did before: projections and logits in bf16 under autocast.
            query = attention.q_dwconv(attention.q(feature)).reshape(2, 2, -1, 144)
            key = attention.kv_dwconv(attention.kv(prompt)).chunk(2, dim=1)[0].reshape(2, 2, -1, 144)
            logits = F.normalize(query, dim=-1) @ F.normalize(key, dim=-1).transpose(-2, -1) * attention.temperature
        differing += sum(int((a != b).any()) for a, b in zip(reference, mixed))
        for keep, chosen in zip(attention.kept_counts(16), reference):
            differing_bf16_logits += int((torch.topk(logits.float(), keep, dim=-1).indices.sort(-1).values != chosen).any())
        torch.testing.assert_close(out_bf16.float(), attention(feature, prompt), atol=0.05, rtol=0.05)
    assert differing == 0
    # The check has teeth: bf16 logits do select other channels on these inputs.
    assert differing_bf16_logits > 0


def test_loss_terms_keep_their_graph_and_sum_to_the_loss(model):
    out = model(torch.rand(2, 3, 16, 16), degradation_labels=torch.tensor([0, 2]), labels=torch.rand(2, 3, 16, 16))
    terms, config = out.loss_terms, model.config
    assert all(term.requires_grad for term in terms.values())
    expected = (terms["pixel"] + config.prompt_regularization_weight * terms["prompt_angle"]
                + config.degradation_estimator_loss_weight * terms["degradation_estimator"])
    torch.testing.assert_close(out.loss, expected)


def test_integer_task_ids_equal_names(model):
    pixel_values = torch.rand(2, 3, 16, 16)
    by_ids = model(pixel_values, degradation_labels=torch.tensor([1, 4])).reconstruction
    by_names = model(pixel_values, degradation_labels=["rain", "low-light"]).reconstruction
    torch.testing.assert_close(by_ids, by_names, rtol=0, atol=0)


def test_label_free_tiling_estimates_once_per_image_so_tiles_agree():
    """Auto mode with tiles uses one estimate for the whole image; per-tile estimates would differ."""
    import numpy as np

    from modeling import restore
    from modeling.inference import estimate_degradation_weights, run_model

    model = tiny_model("pip", seed=3)
    with torch.no_grad():  # make the estimator's answer depend strongly on content
        model.degradation_estimator.classifier[-1].weight.mul_(40)
    rng = np.random.default_rng(0)
    image = np.concatenate([np.full((96, 48, 3), 0.9), rng.random((96, 48, 3))], axis=1).astype(np.float32)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    weights = estimate_degradation_weights(model, pixels)
    auto = restore(image, model=model, tile=48, tile_overlap=16)
    labelled = restore(image, model=model, tile=48, tile_overlap=16, degradation=weights)
    np.testing.assert_array_equal(auto, labelled)
    # Estimating on each tile (the old behaviour) gives a different result on this image.
    per_tile = run_model(model, pixels, tile=48, tile_overlap=16)[0].permute(1, 2, 0).numpy()
    assert np.abs(per_tile - labelled).max() > 1e-3
    # Hard mode is the one-hot of the most likely class.
    hard = estimate_degradation_weights(model, pixels, auto_mode="hard")
    soft = estimate_degradation_weights(model, pixels, auto_mode="soft")
    assert hard.sum() == 1 and hard[0, soft.argmax()] == 1


def test_cautious_label_free_mode_picks_the_least_changing_prompt_among_close_classes():
    """auto_mode="cautious": the top class when it leads clearly; among classes within the margin of the top one,
    the class whose one-hot restoration of the judged windows changes them least (checked per image of a batch)."""
    import numpy as np

    from modeling import restore
    from modeling.inference import _estimation_views, estimate_degradation_weights

    model = tiny_model("pip", seed=5)
    with torch.no_grad():  # prompts that differ clearly, so each class restores differently
        for name, prompt in model.named_parameters():
            if name.endswith("degradation_prompts"):
                prompt.normal_(0, 2, generator=torch.Generator().manual_seed(1))
    images = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    soft = estimate_degradation_weights(model, images, auto_mode="soft")
    windows = _estimation_views(images, max_pixels=32 * 24, crop=512)  # small: judged whole

    def change(image: int, label: int) -> float:
        one_hot = torch.nn.functional.one_hot(torch.tensor([label]), 5).float()
        with torch.no_grad():
            return sum(float((model(pixel_values=w[image : image + 1], degradation_labels=one_hot).reconstruction
                              - w[image : image + 1]).pow(2).mean()) for w in windows)

    # Margin 0: only the top class is a candidate, so cautious is hard.
    torch.testing.assert_close(estimate_degradation_weights(model, images, auto_mode="cautious", margin=0.0),
                               estimate_degradation_weights(model, images, auto_mode="hard"))
    # Margin 1: every class is a candidate; the least-changing one is chosen, per image.
    everyone = estimate_degradation_weights(model, images, auto_mode="cautious", margin=1.0)
    changes = [[change(image, label) for label in range(5)] for image in range(2)]
    assert everyone.argmax(-1).tolist() == [int(np.argmin(c)) for c in changes]
    assert everyone.sum(-1).tolist() == [1.0, 1.0]
    # A margin that takes in exactly the top two classes of the first image chooses between those two.
    top_two = soft[0].topk(2)
    between = float(top_two.values[0] - top_two.values[1]) + 1e-6
    chosen = estimate_degradation_weights(model, images[:1], auto_mode="cautious", margin=between)
    expected = min(top_two.indices.tolist(), key=lambda label: changes[0][label])
    assert chosen.argmax(-1).item() == expected
    # restore() uses the same choice: identical to restoring with that label.
    image = images[0].permute(1, 2, 0).numpy()
    cautious = estimate_degradation_weights(model, images[:1], auto_mode="cautious")
    np.testing.assert_array_equal(restore(image, model, degradation="auto", auto_mode="cautious"),
                                  restore(image, model, degradation=cautious))
    with pytest.raises(ValueError, match="cautious"):
        restore(image, model, degradation="auto", auto_mode="careful")


def test_large_images_are_judged_from_four_crops():
    from modeling.inference import _estimation_views

    views = _estimation_views(torch.zeros(1, 3, 300, 500), max_pixels=100 * 100, crop=64)
    assert len(views) == 4 and all(v.shape[-2:] == (64, 64) for v in views)
    assert len(_estimation_views(torch.zeros(1, 3, 50, 50), max_pixels=100 * 100, crop=64)) == 1


def test_an_estimator_trained_on_crops_judges_a_grid_of_windows_of_that_size():
    """`degradation_estimator_window`: restore() averages the estimator's weights over a 4 x 4 grid of windows of
    the trained crop size (corners included), whatever the image size; an image smaller than a window is judged
    whole."""
    from modeling.inference import _estimation_windows, estimate_degradation_weights

    image = torch.rand(1, 3, 100, 70, generator=torch.Generator().manual_seed(0))
    windows = _estimation_windows(image, 32)
    assert len(windows) == 16 and all(w.shape[-2:] == (32, 32) for w in windows)
    assert torch.equal(windows[0], image[..., :32, :32]) and torch.equal(windows[-1], image[..., -32:, -32:])
    assert len(_estimation_windows(image[..., :34, :], 32)) == 12  # only 3 distinct rows of windows fit
    assert [w.shape[-2:] for w in _estimation_windows(image[..., :20, :20], 32)] == [(20, 20)]

    model = tiny_model("pip", seed=3, degradation_estimator_input="pixels",
                       degradation_estimator_statistics=["mean", "std", "max"], degradation_estimator_window=32)
    with torch.no_grad():
        expected = torch.stack([model.estimate_degradation(w) for w in windows]).mean(0)
        whole = model.estimate_degradation(image)
    got = estimate_degradation_weights(model, image, auto_mode="soft", dtype="fp32")
    torch.testing.assert_close(got, expected)
    assert (got - whole).abs().max() > 1e-4  # judging the whole image differs
    chosen = estimate_degradation_weights(model, image, auto_mode="hard", dtype="fp32")  # one-hot of the windows' likeliest class
    torch.testing.assert_close(chosen, torch.nn.functional.one_hot(expected.argmax(-1), 5).float())
    with pytest.raises(Exception, match="degradation_estimator_window"):
        tiny_model("pip", degradation_estimator_window=4)


def test_frequency_loss_adds_the_weighted_fft_l1_and_is_off_by_default(model):
    """MIMO-UNet's frequency term, on an orthonormal real FFT, checked against numpy's FFT."""
    import numpy as np

    pixel_values, clean = torch.rand(2, 3, 16, 12), torch.rand(2, 3, 16, 12)
    assert "frequency" not in model(pixel_values, degradation_labels=[0, 1], labels=clean).loss_terms
    config = PIPConfig(**{**model.config.to_dict(), "frequency_loss_weight": 0.25, "pixel_loss": "l1"})
    weighted = PIPForImageRestoration(config).eval()
    weighted.load_state_dict(model.state_dict())
    out = weighted(pixel_values, degradation_labels=[0, 1], labels=clean)
    spectrum = np.fft.rfft2((out.reconstruction - clean).detach().double().numpy(), norm="ortho")
    expected_frequency = np.abs(np.stack([spectrum.real, spectrum.imag])).mean()
    assert out.loss_terms["frequency"].item() == pytest.approx(expected_frequency, rel=1e-5)
    assert out.loss_terms["pixel"].item() == pytest.approx(F.l1_loss(out.reconstruction, clean).item(), rel=1e-6)
    terms = out.loss_terms
    expected = (terms["pixel"] + 0.25 * terms["frequency"] + config.prompt_regularization_weight * terms["prompt_angle"]
                + config.degradation_estimator_loss_weight * terms["degradation_estimator"])
    torch.testing.assert_close(out.loss, expected)
    assert terms["frequency"].requires_grad
    with pytest.raises(StrictDataclassClassValidationError, match="frequency_loss_weight must be non-negative"):
        PIPConfig(frequency_loss_weight=-0.1)


def test_mirror_extend_keeps_an_image_and_grows_thin_sides_by_its_mirror_images():
    from modeling.modeling_pip import mirror_extend

    image = torch.arange(2 * 3 * 2 * 5, dtype=torch.float32).view(2, 3, 2, 5)
    extended = mirror_extend(image, 7)
    assert extended.shape == (2, 3, 7, 7)
    torch.testing.assert_close(extended[..., :2, :5], image)
    torch.testing.assert_close(extended[..., 2:4, :5], image.flip(-2))  # the first mirror image below it
    torch.testing.assert_close(extended[..., :2, 5:7], image.flip(-1)[..., :2])  # and to its right
    assert torch.equal(mirror_extend(torch.full((1, 3, 1, 1), 0.5), 32), torch.full((1, 3, 32, 32), 0.5))
    large = torch.rand(1, 3, 40, 33)
    assert mirror_extend(large, 32) is large


def channel_layer_norm(features: torch.Tensor) -> torch.Tensor:
    """An identity-initialised WithBias ChannelLayerNorm, written out: per pixel, over the channel axis."""
    centred = features - features.mean(dim=1, keepdim=True)
    return centred / torch.sqrt(features.var(dim=1, keepdim=True, unbiased=False) + 1e-5)


def hand_set_prompt_to_feature(feature_dim: int, prompt_dim: int):
    """A selective prompt-to-feature block whose attention adds 100, 200, ... to its channels 0, 1, ... and whose
    feed-forward network adds nothing, so that where each channel ends up is readable from the output."""
    from conftest import tiny_config
    from modeling.modeling_pip import SelectivePromptToFeature

    block = SelectivePromptToFeature(feature_dim, prompt_dim, tiny_config("pip", bias=True))
    with torch.no_grad():
        block.attn.project_out.weight.zero_()
        block.attn.project_out.bias.copy_(100.0 * torch.arange(1, prompt_dim + 1))
        block.ffn.project_out.weight.zero_()
        block.ffn.project_out.bias.zero_()
    return block


def test_a_feature_wider_than_its_prompt_attends_with_its_first_channels_and_passes_the_rest_after_them():
    # Official Topm_CrossTransformerRestormer_Block_PIM: split the normalised feature into its first prompt_dim
    # channels (attention, residual on the normalised feature) and the rest, concatenated back after them.
    block = hand_set_prompt_to_feature(feature_dim=6, prompt_dim=4)
    feature, prompt = torch.randn(1, 6, 3, 5), torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        output = block(feature, prompt)
    normalised = channel_layer_norm(feature)
    attention = 100.0 * torch.arange(1, 5).view(1, 4, 1, 1)
    expected = torch.cat([normalised[:, :4] + attention, normalised[:, 4:]], dim=1)
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=0)


def test_a_feature_narrower_than_its_prompt_is_zero_padded_after_its_channels_then_projected_back():
    # Official: zeros appended after the feature's channels up to prompt_dim, attention, then a 1x1 conv back.
    block = hand_set_prompt_to_feature(feature_dim=3, prompt_dim=6)
    with torch.no_grad():
        # Output channel j reads padded channel j and, twice, padding channel 3 + j (zero before the attention).
        projection = torch.zeros(3, 6)
        for j in range(3):
            projection[j, j], projection[j, 3 + j] = 1.0, 2.0
        block.project_to_feature.weight.copy_(projection[:, :, None, None])
    feature, prompt = torch.randn(1, 3, 4, 4), torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        output = block(feature, prompt)
    normalised = channel_layer_norm(feature)
    expected = torch.stack(
        [normalised[:, j] + 100.0 * (j + 1) + 2.0 * 100.0 * (3 + j + 1) for j in range(3)], dim=1
    )
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=0)


def test_prompt_in_prompt_reads_the_first_prompt_dim_channels_of_a_wider_skip_and_zero_pads_a_narrower_one():
    from modeling.modeling_pip import PromptInPrompt, align_channels

    features = torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(align_channels(features, 5)[0, :, 0, 0], torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0]))
    torch.testing.assert_close(align_channels(features, 2)[0, :, 0, 0], torch.tensor([1.0, 2.0]))

    torch.manual_seed(0)
    module = PromptInPrompt(4, 4, 5, 2, 2.66, False, "mean").eval()
    weights = F.one_hot(torch.tensor([2]), 5).float()
    skip = torch.randn(1, 7, 8, 8)
    with torch.no_grad():
        # A 7-channel skip gives the prompt of its first 4 channels; channels 4-6 have no say.
        torch.testing.assert_close(module(skip, weights), module(skip[:, :4], weights))
        # A 2-channel skip gives the prompt of itself followed by two zero channels.
        narrow = skip[:, :2]
        padded = torch.cat([narrow, torch.zeros(1, 2, 8, 8)], dim=1)
        torch.testing.assert_close(module(narrow, weights), module(padded, weights))
        assert not torch.allclose(module(narrow, weights), module(padded.roll(2, dims=1), weights))


def test_fp16_restores_black_and_textured_images_on_cpu_close_to_fp32():
    """`F.normalize` clamps a norm at 1e-12, which is 0 in fp16: the zero-padded prompt channels of PIP's prompt
    interaction (all of them for a black image) became 0 / 0 = NaN, and fp16 restore raised NonFiniteOutputError.
    Half-precision inputs are now normalised in fp32; fp32 ones exactly as `F.normalize` does."""
    from conftest import smooth_image
    from modeling.inference import restore

    model = tiny_model("pip")
    for image in (np.zeros((32, 32, 3), np.float32), smooth_image(32, 32).astype(np.float32) / 255):
        full = restore(image, model, dtype="fp32", tile=0)  # the estimated degradation, as by default
        half = restore(image, model, dtype="fp16", tile=0)
        assert np.isfinite(half).all()
        assert np.abs(half - full).max() < 2e-3
    from modeling.tile_context import unit_vectors

    rows = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1e-30, 0.0, 2e-30]])
    assert torch.equal(unit_vectors(rows), F.normalize(rows, dim=-1))
    for dtype in (torch.float16, torch.bfloat16):
        normalized = unit_vectors(rows[:2].to(dtype))
        assert normalized.dtype == dtype
        assert torch.equal(normalized.float(), torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.8, 0.0]]).to(dtype).float())
