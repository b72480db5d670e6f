"""DPPD: prototype assignment, prompt distributions, CrossFusion, labels, loss, memory, converter, training."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_model
from data_helpers import save, textured_image
from huggingface_hub.errors import StrictDataclassClassValidationError
from launch_helpers import accelerate_launch, run_to_end
from safetensors.torch import load_file

import modeling
from modeling import DPPDConfig, DPPDForImageRestoration, RestorationInputError
from modeling.conversion import convert_dppd
from modeling.degradation_labels import hard_weights
from modeling.modeling_dppd import CrossFusion, sample_prompts

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
NAMES = ["noise", "rain", "haze", "blur", "low-light"]


def images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP oversubscription (10x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_model("dppd")


# ---- degradation prototype assignment ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"shared_assignment": True}, {"prompt_conditioning": "hard"}])
def test_assignment_probabilities_sum_to_one(overrides):
    model = tiny_model("dppd", **overrides)
    pixel_values = images(3)
    with torch.no_grad():
        out = model(pixel_values)
        estimate = model.estimate_degradation(pixel_values)
        hard = model.estimate_degradation(pixel_values, hard=True)
    assert len(out.prompt_weights) == 3
    for probabilities in (*out.prompt_weights, out.degradation_weights, estimate):
        assert probabilities.shape == (3, 5)
        assert (probabilities >= 0).all()
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    # The forward reports exactly what label-free inference estimates.
    torch.testing.assert_close(out.degradation_weights, estimate, atol=1e-6, rtol=0)
    assert torch.equal(hard.sum(-1), torch.ones(3)) and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.argmax(-1), estimate.argmax(-1))


def test_hard_conditioning_restores_with_the_one_hot_of_the_assignment():
    """prompt_conditioning="hard": the label-free forward conditions on the most likely prototype alone, i.e. it
    equals the forward given that class as the label (soft conditioning would mix the prototypes)."""
    model = tiny_model("dppd", shared_assignment=True, prompt_conditioning="hard")
    pixel_values = images(2, 24)
    with torch.no_grad():
        free = model(pixel_values).reconstruction
        hard = model.estimate_degradation(pixel_values, hard=True)
        labelled = model(pixel_values, degradation_labels=hard).reconstruction
        soft = model(pixel_values, degradation_labels=model.estimate_degradation(pixel_values)).reconstruction
    torch.testing.assert_close(free, labelled, atol=1e-6, rtol=0)
    assert (free - soft).abs().max() > 1e-5  # the test can tell hard from soft conditioning


def test_shared_assignment_estimate_reproduces_the_label_free_forward():
    """With one shared assignment, passing the estimate back as labels (what tiled inference does) is exact."""
    model = tiny_model("dppd", shared_assignment=True)
    pixel_values = images(2, 24)
    with torch.no_grad():
        free = model(pixel_values).reconstruction
        estimate = model.estimate_degradation(pixel_values)
        labelled = model(pixel_values, degradation_labels=estimate).reconstruction
    torch.testing.assert_close(labelled, free, atol=1e-6, rtol=0)
    assert model.decoder_prompts.level3.assignment is None and model.decoder_prompts.level2.assignment is None


def max_prototype_cosine(model) -> float:
    values = []
    for module in model.decoder_prompts.assignment_modules():
        unit = module.unit_prototypes()
        values.append((unit @ unit.t() - 2 * torch.eye(unit.shape[0])).max().item())
    return max(values)


def toy_run(model, steps: int, lr: float, with_labels: bool, optimizer_class=torch.optim.SGD, parameters=None) -> None:
    model.train()
    optimizer = optimizer_class(model.parameters() if parameters is None else parameters, lr=lr)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(steps):
        pixel_values = torch.rand(5, 3, 16, 16, generator=generator)
        kwargs = {"degradation_labels": torch.arange(5)} if with_labels else {}
        loss = model(pixel_values, labels=pixel_values.flip(-1), **kwargs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_prototypes_stay_distinct_during_training():
    """Orthogonal at the start; a toy training run with labels keeps every pair far apart."""
    model = tiny_model("dppd")
    assert max_prototype_cosine(model) < 1e-5
    toy_run(model, steps=25, lr=1e-2, with_labels=True, optimizer_class=torch.optim.Adam)
    assert max_prototype_cosine(model) < 0.3  # every pair still more than 70 degrees apart


def test_separation_term_pulls_collapsed_prototypes_apart():
    def collapsed(separation_weight):
        model = tiny_model("dppd", prototype_separation_weight=separation_weight, prototype_loss_weight=0.0)
        with torch.no_grad():
            for module in model.decoder_prompts.assignment_modules():
                base = module.prototypes[0].clone()
                module.prototypes.copy_(base + 0.05 * torch.randn_like(module.prototypes))
        return model

    def prototypes(model):
        return [module.prototypes for module in model.decoder_prompts.assignment_modules()]

    # Only the prototypes move (plain SGD on the whole loss, so the step follows the gradient's size).
    with_term, without_term = collapsed(1.0), collapsed(0.0)
    start = max_prototype_cosine(with_term)
    assert start > 0.9
    toy_run(with_term, steps=40, lr=1.0, with_labels=False, parameters=prototypes(with_term))
    toy_run(without_term, steps=40, lr=1.0, with_labels=False, parameters=prototypes(without_term))
    assert max_prototype_cosine(with_term) < 0.3
    assert max_prototype_cosine(without_term) > 0.85


def test_fixed_prototypes_never_change_and_survive_save_load(tmp_path):
    model = tiny_model("dppd", learnable_prototypes=False)
    before = [m.prototypes.detach().clone() for m in model.decoder_prompts.assignment_modules()]
    toy_run(model, steps=2, lr=1e-2, with_labels=True, optimizer_class=torch.optim.Adam)
    for module, prototypes in zip(model.decoder_prompts.assignment_modules(), before):
        assert torch.equal(module.prototypes, prototypes)
    assert not any("prototypes" in name for name, _ in model.named_parameters())
    model.save_pretrained(tmp_path)
    loaded = DPPDForImageRestoration.from_pretrained(tmp_path)
    assert not any("prototypes" in name for name, _ in loaded.named_parameters())
    for module, prototypes in zip(loaded.decoder_prompts.assignment_modules(), before):
        assert torch.equal(module.prototypes, prototypes)


# ---- prompt distribution learning ----------------------------------------------------------------------------


def test_eval_mode_is_deterministic(model):
    pixel_values = images()
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(pixel_values).reconstruction
        torch.manual_seed(2)
        second = model(pixel_values).reconstruction
    assert torch.equal(first, second)


def test_train_mode_samples_and_is_reproducible_with_a_seed():
    model = tiny_model("dppd").train()
    pixel_values = images()
    with torch.no_grad():
        torch.manual_seed(1)
        seed1 = model(pixel_values).reconstruction
        torch.manual_seed(1)
        seed1_again = model(pixel_values).reconstruction
        torch.manual_seed(2)
        seed2 = model(pixel_values).reconstruction
        mean = model.eval()(pixel_values).reconstruction
    assert torch.equal(seed1, seed1_again)
    assert (seed1 - seed2).abs().max() > 1e-4
    assert (seed1 - mean).abs().max() > 1e-4


def test_sampling_is_reparameterised():
    """The pixel loss reaches the log-variance head through the sample in training, not through the mean."""
    grads = {}
    for training in (True, False):
        model = tiny_model("dppd", kl_loss_weight=0.0).train(training)
        torch.manual_seed(0)
        out = model(images(), labels=images(seed=1))
        out.loss_terms["pixel"].backward()
        grad = model.decoder_prompts.latent.distribution.log_variance.weight.grad
        grads[training] = 0.0 if grad is None else grad.abs().sum().item()
    assert grads[True] > 0 and grads[False] == 0


def test_inference_samples_average():
    mean, log_variance = torch.zeros(2, 3, 400), torch.zeros(2, 3, 400)
    torch.manual_seed(0)
    one = sample_prompts(mean, log_variance, training=True, num_inference_samples=1)
    averaged = sample_prompts(mean, log_variance, training=False, num_inference_samples=16)
    assert sample_prompts(mean, log_variance, training=False, num_inference_samples=1) is mean
    assert 0.9 < one.std().item() < 1.1  # one sample of N(0, 1)
    assert 0.2 < averaged.std().item() < 0.3  # the mean of 16: std 1/4

    model = tiny_model("dppd", num_inference_samples=4)
    torch.manual_seed(3)
    a = model(images()).reconstruction
    torch.manual_seed(3)
    b = model(images()).reconstruction
    mean_model = tiny_model("dppd")
    assert torch.equal(a, b)
    assert (a - mean_model(images()).reconstruction).abs().max() > 1e-5


def test_inference_samples_agree_across_tiles_calls_and_batches():
    """With n > 1 inference samples the draws are fixed: a tiled restore (one model call per tile group and per
    statistics pass) comes as close to the whole image as the mean's does, two calls agree without reseeding, and
    an image restores in a batch as alone. Fresh draws per call gave 31.6 dB (tiled vs whole) and 24.4 dB (in a
    batch vs alone)."""
    from conftest import smooth_image

    from modeling.inference import degradation_label_ids, run_model

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / (a.double() - b.double()).pow(2).mean()))

    image = torch.from_numpy(smooth_image(64, 96, seed=3)).permute(2, 0, 1)[None].float() / 255
    image = image * torch.linspace(0.3, 1.0, 96)  # uneven light: tiles need the whole image's statistics
    agreement = {}
    for samples in (1, 4):
        model = tiny_model("dppd", num_inference_samples=samples)
        labels = degradation_label_ids(model, "low-light", 1)
        options = dict(degradation_labels=labels, dtype="fp32")
        whole = run_model(model, image, tile=0, **options)
        tiled = run_model(model, image, tile=32, tile_overlap=16, statistics_passes=3, **options)
        agreement[samples] = psnr(tiled, whole)
    assert agreement[4] > 44 and agreement[4] > agreement[1] - 3, agreement

    torch.testing.assert_close(run_model(model, image, tile=0, **options), whole, atol=0, rtol=0)
    other = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    batch = run_model(model, torch.cat([other, image]), tile=0, degradation_labels=labels.repeat(2, 1), dtype="fp32")
    torch.testing.assert_close(batch[1:], whole, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "pixel_values",
    [torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16), torch.rand(2, 3, 16, 16) * 1e6,
     (torch.rand(2, 3, 16, 16) > 0.5).float() * 1e4 - 5e3],
    ids=["zeros", "ones", "huge", "checkerboard"],
)
def test_kl_stays_finite_for_extreme_inputs(pixel_values):
    model = tiny_model("dppd").train()
    with torch.no_grad():  # and with a distribution head blown up by a million
        for place in (model.decoder_prompts.latent, model.decoder_prompts.level3, model.decoder_prompts.level2):
            place.distribution.log_variance.weight.mul_(1e6)
            place.distribution.mean_offset.weight.mul_(1e6)
    torch.manual_seed(0)
    out = model(pixel_values, labels=torch.zeros_like(pixel_values), degradation_labels=["rain", "noise+haze"])
    for name, term in out.loss_terms.items():
        assert torch.isfinite(term), name
    limit = model.config.log_variance_limit
    assert out.loss_terms["prompt_kl"].item() > 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    distribution = model.decoder_prompts.latent.distribution
    # The KL itself at the log-variance limits and far from the prior: finite, and equal to the closed form.
    mean = torch.full((1, 2, 3), 1e15)
    for log_variance in (-limit, limit):
        value = distribution.kl_divergence(mean, torch.full((1, 2, 3), float(log_variance)), torch.zeros(1, 2, 3))
        expected = 0.5 * (np.exp(log_variance) + 1e30 - 1 - log_variance)
        assert np.isfinite(value.item()) and value.item() == pytest.approx(expected, rel=1e-5)


# ---- CrossFusion -----------------------------------------------------------------------------------------------


def test_cross_fusion_treats_every_position_as_a_query():
    torch.manual_seed(0)
    fusion = CrossFusion(feature_dim=6, prompt_dim=4, num_heads=2, bias=False, layer_norm_type="WithBias")
    features, prompts = torch.randn(2, 6, 5, 7), torch.randn(2, 3, 4)
    permutation = torch.randperm(35)
    fused = fusion(features, prompts)
    shuffled = fusion(features.flatten(2)[..., permutation].reshape(2, 6, 5, 7), prompts)
    # No spatial mixing: permuting positions permutes the output, so there is no (HW x HW) map anywhere.
    torch.testing.assert_close(shuffled.flatten(2), fused.flatten(2)[..., permutation])
    # Each position's update is a convex combination of the tokens' values: identical tokens give one update.
    same = prompts[:, :1].expand(-1, 3, -1)
    update = fusion(features, same) - features
    value = fusion.project_out(fusion.value(same[:, 0]).reshape(2, 4, 1, 1))
    torch.testing.assert_close(update, value.expand_as(update), atol=1e-5, rtol=1e-5)


def test_memory_grows_linearly_with_pixels():
    """Peak forward memory (peak RSS minus the baseline after a warm-up, one subprocess per size; see
    benchmarks/bench_memory_scaling.py) from 256^2 to 1024^2 on CPU: at most 17x for 16x the pixels."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from bench_memory_scaling import run
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    config = {"dim": 4, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 1, 1],
              "prompt_dims": [4, 8, 8], "num_prompt_tokens": 5, "embedding_dim": 8}
    report = run("dppd", config, [256, 1024], threads=1)
    small, large = report["results"]
    assert small["finite"] and large["finite"]
    assert large["memory_ratio"] <= 17.0, report
    # The measurement sees the activations, not only constant overhead.
    assert large["memory_ratio"] >= 8.0, report


# ---- labels, outputs and loss ----------------------------------------------------------------------------------


def test_label_forms_agree(model):
    pixel_values = images()
    with torch.no_grad():
        by_name = model(pixel_values, degradation_labels=["rain", "haze"])
        by_alias = model(pixel_values, degradation_labels=["derain", "dehaze"])
        by_ids = model(pixel_values, degradation_labels=torch.tensor([1, 2]))
        by_weights = model(pixel_values, degradation_labels=torch.tensor([[0, 3.0, 0, 0, 0], [0, 0, 0.5, 0, 0]]))
    expected = torch.zeros(2, 5)
    expected[0, 1] = expected[1, 2] = 1
    for out in (by_name, by_alias, by_ids, by_weights):
        torch.testing.assert_close(out.degradation_weights, expected)  # rows normalised to a mixture
        torch.testing.assert_close(out.reconstruction, by_name.reconstruction, atol=1e-6, rtol=0)


def test_labels_replace_the_assignment_and_change_the_restoration(model):
    pixel_values = images(1)
    with torch.no_grad():
        noise = model(pixel_values, degradation_labels="noise")
        rain = model(pixel_values, degradation_labels="rain")
        mixed = model(pixel_values, degradation_labels="rain+haze")
        free = model(pixel_values)
    assert (noise.reconstruction - rain.reconstruction).abs().max() > 1e-5
    torch.testing.assert_close(mixed.degradation_weights, torch.tensor([[0, 0.5, 0.5, 0, 0]]))
    # The model's own assignment is still reported (and identical: labels do not change the features it sees
    # at the latent place).
    torch.testing.assert_close(noise.prompt_weights[0], free.prompt_weights[0])
    with pytest.raises(RestorationInputError, match="unknown degradation 'snowy'"):
        model(pixel_values, degradation_labels="snowy")


def test_loss_terms_contract(model):
    model.train()
    pixel_values, clean = images(), images(seed=1)
    torch.manual_seed(0)
    labelled = model(pixel_values, labels=clean, degradation_labels=torch.tensor([0, 3]))
    torch.manual_seed(0)
    unlabelled = model(pixel_values, labels=clean)
    model.eval()
    config = model.config
    terms = labelled.loss_terms
    assert set(terms) == {"pixel", "prototype_assignment", "prototype_separation", "prompt_kl"}
    assert set(unlabelled.loss_terms) == {"pixel", "prototype_separation", "prompt_kl"}
    assert all(term.requires_grad for term in terms.values())  # unweighted terms keep their graph
    expected = (terms["pixel"] + config.prototype_loss_weight * terms["prototype_assignment"]
                + config.prototype_separation_weight * terms["prototype_separation"]
                + config.kl_loss_weight * terms["prompt_kl"])
    torch.testing.assert_close(labelled.loss, expected)
    torch.testing.assert_close(terms["pixel"], (labelled.reconstruction - clean).abs().mean())
    # Cross-entropy of the places' own assignments against the labels.
    logits = [p.log() for p in labelled.prompt_weights]
    ce = torch.stack([torch.nn.functional.nll_loss(lp, torch.tensor([0, 3])) for lp in logits]).mean()
    torch.testing.assert_close(terms["prototype_assignment"], ce, atol=1e-5, rtol=1e-5)


def test_declares_labels_and_estimates():
    assert DPPDForImageRestoration.accepts_degradation_labels is True
    assert tiny_model("dppd").can_estimate_degradation
    assert modeling.MODEL_CLASSES["dppd"] == (DPPDConfig, DPPDForImageRestoration)


def test_tiled_restore_estimates_once_and_passes_the_weights_to_every_tile():
    model = tiny_model("dppd")
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("degradation_labels"))
        return forward(*args, **kwargs)

    model.forward = spy
    image = textured_image(0, 40, 40)
    restored = modeling.restore(image, model=model, tile=16, tile_overlap=4, degradation="auto", auto_mode="hard")
    assert restored.shape == image.shape
    assert len(seen) >= 2 and all(labels is not None for labels in seen)
    first = seen[0][:1]
    assert all(torch.equal(labels, first.expand_as(labels)) for labels in seen)
    with torch.no_grad():
        estimate = model.estimate_degradation(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(first, hard_weights(estimate))  # "hard": the likeliest class


@pytest.mark.parametrize(
    "overrides",
    [{"shared_assignment": True, "fusion_transformer_block": True, "latent_reduction": False,
      "prompt_conditioning": "hard", "degradation_names": ["noise", "rain", "haze"], "cross_fusion_heads": 1}],
)
def test_options_round_trip(tmp_path, overrides):
    model = tiny_model("dppd", **overrides)
    assert model.unet.up4_3.body[0].in_channels == 8 * model.config.dim  # Restormer's upsampling
    assert model.decoder_prompts.level2.fusion_block is not None
    model.save_pretrained(tmp_path)
    loaded = DPPDForImageRestoration.from_pretrained(tmp_path).eval()
    assert loaded.config.degradation_names == ["noise", "rain", "haze"]
    with torch.no_grad():
        assert torch.equal(loaded(images()).reconstruction, model(images()).reconstruction)
        out = loaded(images(), degradation_labels="haze")
    torch.testing.assert_close(out.degradation_weights, torch.tensor([[0, 0, 1.0]] * 2))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(prompt_dims=[4, 8]), "prompt_dims must list 3"),
        (dict(cross_fusion_heads=3), "not divisible by cross_fusion_heads=3"),
        (dict(assignment_temperature=0.0), "assignment_temperature must be positive"),
        (dict(prior_std=float("nan")), "prior_std must be a finite number"),
        (dict(prompt_conditioning="argmax"), "prompt_conditioning must be one of"),
        (dict(degradation_names=["rain", "rain"]), "degradation_names must be unique"),
        (dict(degradation_names=["rain+haze"]), "may not contain"),
        (dict(learnable_prototypes="yes"), "learnable_prototypes must be True or False"),
        (dict(num_inference_samples=0), "num_inference_samples must be a positive integer"),
        (dict(kl_loss_weight=-1.0), "kl_loss_weight must be non-negative"),
        (dict(prototype_separation_margin=1.0), "prototype_separation_margin"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config("dppd", **overrides)


def test_config_documents_every_field():
    doc = DPPDConfig.__doc__
    own = set(DPPDConfig.__dataclass_fields__) - set(modeling.RestorationBackboneConfig.__dataclass_fields__)
    assert own and all(f"{name} (`" in doc for name in own), [n for n in own if f"{n} (`" not in doc]


# ---- converter skeleton ----------------------------------------------------------------------------------------


def placeholder_official_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under the names the PLACEHOLDER table assumes (its exact inverse)."""
    official = {}
    for key, value in model.state_dict().items():
        if key == "decoder_prompts.latent.output_projection.weight":
            name = "reduce_noise_level3.weight"
        elif key.startswith("decoder_prompts."):
            name = key
            for theirs, ours in convert_dppd.PLACEHOLDER_PROMPT_MODULE_PREFIXES:
                name = name.replace(ours, theirs)
        else:
            name = key.removeprefix("unet.")
            for norm in ("norm1", "norm2"):
                name = name.replace(f".{norm}.", f".{norm}.body.")
        official[name] = value.clone()
    return official


def test_converter_skeleton_round_trip_and_strict_report(tmp_path, capsys):
    model = tiny_model("dppd")
    official = placeholder_official_state_dict(model)
    path = tmp_path / "dppd.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in official.items()}, "epoch": 1}, path)
    converted = convert_dppd.convert_dppd_checkpoint(str(path), tiny_config("dppd"))
    with torch.no_grad():
        assert torch.equal(converted(images()).reconstruction, model(images()).reconstruction)

    broken = dict(official)
    broken.pop("prompt1.distribution.prior_means")
    broken["prompt3.dppd.sigma_head.weight"] = torch.zeros(2)
    broken["latent.0.attn.qkv.weight"] = torch.zeros(3, 3, 1, 1)  # wrong shape for our latent block
    torch.save({"state_dict": broken}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError) as error:
        convert_dppd.convert_dppd_checkpoint(str(tmp_path / "broken.ckpt"), tiny_config("dppd"))
    message = str(error.value)
    assert "UNVERIFIED" in message
    assert "missing (1): decoder_prompts.level2.distribution.prior_means" in message
    assert "unexpected (1): decoder_prompts.latent.dppd.sigma_head.weight" in message
    assert "shape_mismatch (1): ('unet.latent.0.attn.qkv.weight', [3, 3, 1, 1]" in message

    convert_dppd.main([str(path), "--inspect"])
    listing = capsys.readouterr().out
    assert f"{len(official)} keys" in listing and "prompt3.assignment.prototypes\t[5, 8]" in listing
    convert_dppd.main([str(path), str(tmp_path / "out"), "--config", json.dumps(
        {k: v for k, v in tiny_config("dppd").to_diff_dict().items() if k in DPPDConfig.__dataclass_fields__})])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "UNVERIFIED" in convert_dppd.__doc__


# ---- training through train.py with the DPPD recipes ----------------------------------------------------------

TINY_DPPD = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2],
             "prompt_dims": [4, 8, 8], "num_prompt_tokens": 3, "embedding_dim": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dppd_corpus")
    for i in range(6):
        save(root / "clean" / f"photo{i}.png", textured_image(i, 48, 48))
    save(root / "heldout" / "photo0.png", textured_image(100, 32, 32))
    return root


def recipe_argv(recipe: str, corpus: Path, output_dir: Path, model_config: dict) -> list[str]:
    values = {
        "model_config": json.dumps(model_config), "synthesize_missing": "true", "patch_size": "32",
        "train_batch_size": "2", "dataloader_num_workers": "0", "shards_per_rank": "2", "max_train_steps": "4",
        "steps_per_epoch": "2", "checkpointing_steps": "2", "checkpoints_total_limit": "1", "validation_steps": "0",
        "validation_images_per_task": "1", "logging_steps": "1", "report_to": "none", "mixed_precision": "no",
        "output_dir": str(output_dir),
    }
    argv = ["--config", str(REPO / "training" / "configs" / recipe), "--data_roots", f"clean={corpus / 'clean'}",
            "--validation_roots", f"clean={corpus / 'heldout'}"]
    for key, value in values.items():
        argv += [f"--{key}", value]
    return argv


def script_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")


@pytest.mark.parametrize("name", ["dppd_3task", "dppd_5task"])
def test_recipes_are_promptirs_with_dppd(name):
    from training.train import parse_args

    dppd = parse_args(["--config", str(REPO / "training" / "configs" / f"{name}.yaml")])
    promptir = parse_args(["--config", str(REPO / "training" / "configs" / f"{name.replace('dppd', 'promptir')}.yaml")])
    differing = {f.name for f in dataclasses.fields(dppd) if getattr(dppd, f.name) != getattr(promptir, f.name)}
    assert differing == {"config", "model_type", "model_config", "output_dir"} - (
        {"model_config"} if name == "dppd_5task" else set())
    assert dppd.model_type == "dppd"
    DPPDConfig(**dppd.model_config)  # the recipe's model config is valid
    if name == "dppd_3task":
        assert dppd.model_config["degradation_names"] == ["noise", "rain", "haze"]


def test_train_py_with_the_3task_recipe(corpus, tmp_path):
    output_dir = tmp_path / "run"
    config = dict(TINY_DPPD, degradation_names=["noise", "rain", "haze"])
    result = run_to_end([sys.executable, str(TRAIN), *recipe_argv("dppd_3task.yaml", corpus, output_dir, config)],
                        env=script_env(), cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert set(json.loads((output_dir / "model" / "eval_results.json").read_text())) == {"noise", "rain", "haze"}
    trained = DPPDForImageRestoration.from_pretrained(output_dir / "model")
    assert trained.config.degradation_names == ["noise", "rain", "haze"]
    assert trained.decoder_prompts.latent.assignment.prototypes.shape == (3, 8)
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]


def test_two_process_ddp_launch_with_the_5task_recipe(corpus, tmp_path):
    output_dir = tmp_path / "ddp"
    argv = recipe_argv("dppd_5task.yaml", corpus, output_dir, TINY_DPPD)
    result = run_to_end([*accelerate_launch(2), str(TRAIN), *argv], env=script_env(), cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    checksums = json.loads((output_dir / "replica_checksums.json").read_text())["checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert set(json.loads((output_dir / "model" / "eval_results.json").read_text())) == set(NAMES)
    weights = load_file(output_dir / "model" / "model.safetensors")
    assert weights["decoder_prompts.latent.assignment.prototypes"].shape == (5, 8)
    assert sorted(p.name for p in (output_dir / "checkpoint-4").glob("data_state_rank*.pt")) == [
        "data_state_rank0.pt", "data_state_rank1.pt"]


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_assignment_logits_are_the_cosine_similarities_over_the_temperature(temperature):
    """The assignment's logits are cos(embedding, prototype) / assignment_temperature, from a parameter-free layer
    norm of the pooled feature (dropping the temperature softens every assignment tenfold)."""
    from modeling.modeling_dppd import DegradationPrototypeAssignment

    torch.manual_seed(0)
    module = DegradationPrototypeAssignment(6, 8, 3, temperature, learnable_prototypes=True)
    features = torch.randn(2, 6, 5, 7) * 4 + 1
    assignment = module(features)
    embedding, logits = assignment.embedding, assignment.logits
    pooled = features.mean(dim=(2, 3))
    pooled = (pooled - pooled.mean(-1, keepdim=True)) / torch.sqrt(pooled.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected_embedding = torch.nn.functional.normalize(module.embedding(pooled), dim=-1)
    prototypes = module.prototypes / module.prototypes.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(embedding, expected_embedding, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, expected_embedding @ prototypes.t() / temperature, rtol=1e-5, atol=1e-5)
    assert logits.abs().max() <= 1 / temperature + 1e-5


@pytest.mark.parametrize("options", [{}, {"shared_assignment": True, "prompt_conditioning": "hard"}])
def test_a_disk_offloaded_model_restores_as_the_model_in_memory(tmp_path, options):
    """`from_pretrained(device_map="auto")` offloads what does not fit in `max_memory` to disk; accelerate then
    loads each module's weights only for its own forward. The prototypes used to be read by the prompt module
    outside the assignment's forward, so an offloaded DPPD mixed an unloaded tensor and restored NaN."""
    from transformers import AutoModel

    model = tiny_model("dppd", **options)
    model.save_pretrained(tmp_path / "model")
    offloaded = AutoModel.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "60KB"}, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert "disk" in set(offloaded.hf_device_map.values())
    pixel_values = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected, actual = model(pixel_values), offloaded(pixel_values)
        labelled = offloaded(pixel_values, degradation_labels="rain")
    torch.testing.assert_close(actual.reconstruction, expected.reconstruction, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual.degradation_weights, expected.degradation_weights, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            labelled.reconstruction, model(pixel_values, degradation_labels="rain").reconstruction, atol=1e-6, rtol=0
        )


def test_inference_samples_scale_fixed_draws_by_each_places_own_std_and_seed():
    """Outside training, n > 1 samples are mean + std * (the average of n draws from a generator seeded with the
    place's noise_seed), one set of draws for every image of the batch. Each place has its own seed, so its draws
    are not another place's; the predicted variance scales them (an unscaled draw ignores what the model learnt)."""
    mean = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    log_variance = torch.log(torch.tensor([0.25, 1.0, 4.0])).view(1, 3, 1).expand(2, 3, 5)
    for seed in (0, 7):
        draws = torch.randn((4, 3, 5), generator=torch.Generator().manual_seed(seed))
        expected = mean + torch.exp(0.5 * log_variance) * draws.mean(dim=0)
        torch.testing.assert_close(sample_prompts(mean, log_variance, False, 4, noise_seed=seed), expected)
    assert not torch.equal(sample_prompts(mean, log_variance, False, 4, noise_seed=0),
                           sample_prompts(mean, log_variance, False, 4, noise_seed=7))

    model = tiny_model("dppd", num_inference_samples=4)
    places = (model.decoder_prompts.latent, model.decoder_prompts.level3, model.decoder_prompts.level2)
    assert len({place.noise_seed for place in places}) == 3
    with torch.no_grad():
        before = model(images()).reconstruction
        model.decoder_prompts.level3.noise_seed = 11  # the forward draws with the place's own seed
        assert not torch.equal(model(images()).reconstruction, before)
