"""Toy run: do the prompts chosen for different degradations drift apart faster with CPL's contrastive prompt
regularisation (CPR) than with the L1 loss alone?

A tiny CPL model is trained for ``--steps`` steps on three synthetic degradations of smooth random images
(Gaussian noise, haze-like veil, darkening), once with L1 only (lambda = 0) and once with L1 + lambda x CPR, from
the same initial weights and on the same batches. The feature network is a tiny *random* frozen ResNet built
offline (the real one is a pretrained VGG19), so only the mechanism is exercised, not the paper's numbers.

Measured every ``--every`` steps on a fixed probe batch: at each prompt place, the mean prompt each degradation
gets (its routing weights times the prompt components) and the cosine similarity between the degradations'
prompts, averaged over the pairs and the three places (1 = the same prompt, lower = apart).

With ``--forced_routing`` every image of degradation i uses prompt component i at every place (CPL's routing
override, ``forced_prompt``), in training and on the probe, so the chosen prompts no longer depend on the routers:
the measure then shows only how the prompts themselves move. Without it, a single routing choice that flips
(two degradations sharing a component, then not) moves the cosine by up to 0.2, which swamps the prompts' own
drift over 100 steps. With forced routing the routers choose nothing, so the regulariser is allowed to reach them
(``contrastive_routing_grad=True``: the anchor is then the training forward itself); they only scale the forced
component by the softmax value of their own choice.

    HF_HUB_OFFLINE=1 python benchmarks/cpl_prompt_drift.py --steps 100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import ResNetBackbone, ResNetConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runs from a bare checkout too (the package need not be installed)

from modeling import CPLConfig, CPLForImageRestoration, PerPlace  # noqa: E402
from modeling.configuration_prompt_regularization import CONTRASTIVE_LOSS_FORMS  # noqa: E402
from training.losses import build_training_loss  # noqa: E402

DEGRADATIONS = ("noise", "haze", "dark")


def smooth_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    low = torch.rand(count, 3, 4, 4, generator=generator)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0.05, 0.95)


def degrade(clean: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "noise":
        return (clean + 0.15 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    if kind == "haze":
        return clean * 0.5 + 0.45
    return clean * 0.25


def forced_components(per_degradation: int) -> PerPlace:
    """Component i at every place for the images of degradation i (batches are ordered by degradation)."""
    indices = torch.arange(len(DEGRADATIONS)).repeat_interleave(per_degradation)
    return PerPlace((indices, indices, indices))


def batch(per_degradation: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    clean = smooth_images(per_degradation * len(DEGRADATIONS), size, generator)
    degraded = torch.cat([degrade(part, kind, generator) for part, kind in zip(clean.chunk(len(DEGRADATIONS)), DEGRADATIONS)])
    return degraded, clean


@torch.no_grad()
def prompt_separation(
    model: CPLForImageRestoration, probe: torch.Tensor, forced: PerPlace | None = None
) -> tuple[float, float, list]:
    """Mean pairwise cosine between the degradations' mean prompts, over the three places; the mean pairwise
    cosine between the prompt components themselves (the pool every place routes into); and the routing."""
    weights = model(probe, forced_prompt=forced).prompt_weights
    places = (model.decoder_prompts.latent, model.decoder_prompts.level3, model.decoder_prompts.level2)
    cosines, pool_cosines, routing = [], [], []
    for place, place_weights in zip(places, weights):
        components = place.generator.prompt_components.flatten(1)
        prompts = [(w @ components).mean(0) for w in place_weights.chunk(len(DEGRADATIONS))]
        cosines += [F.cosine_similarity(a, b, dim=0).item() for a, b in itertools.combinations(prompts, 2)]
        pool_cosines += [F.cosine_similarity(a, b, dim=0).item() for a, b in itertools.combinations(components, 2)]
        routing.append([w.argmax(1).mode().values.item() for w in place_weights.chunk(len(DEGRADATIONS))])
    return sum(cosines) / len(cosines), sum(pool_cosines) / len(pool_cosines), routing


def run(
    weight: float, seed: int, steps: int, every: int, feature_dir: str, negatives_grad: bool = False,
    routing_grad: bool = False, forced_routing: bool = False, loss: str = "ratio",
) -> list[tuple[int, float, float, list]]:
    config = CPLConfig(
        dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], prompt_dims=[8, 8, 16],
        prompt_sizes=[8, 4, 2], contrastive_weight=weight, contrastive_feature_network=feature_dir,
        contrastive_feature_layers=[0, 1, 2], contrastive_layer_weights=[0.25, 0.5, 1.0],
        contrastive_negatives_grad=negatives_grad, contrastive_routing_grad=routing_grad or forced_routing,
        contrastive_loss=loss,
    )
    torch.manual_seed(seed)
    model = CPLForImageRestoration(config).train()
    loss_fn = build_training_loss(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = torch.Generator().manual_seed(1000 + seed)
    probe, _ = batch(4, 16, torch.Generator().manual_seed(7))
    probe_forced = forced_components(4) if forced_routing else None
    train_forced = forced_components(2) if forced_routing else None
    history = [(0, *prompt_separation(model, probe, probe_forced))]
    for step in range(1, steps + 1):
        degraded, clean = batch(2, 16, data)
        output = model(degraded, labels=clean, forced_prompt=train_forced)
        loss, _ = loss_fn(model, output, degraded, clean, {})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            history.append((step, *prompt_separation(model, probe, probe_forced)))
    return history


def save_feature_network(folder: str) -> str:
    """The toy's frozen feature CNN: a tiny ResNet with seed-123 random weights, saved like a Hub repository."""
    torch.manual_seed(123)
    ResNetBackbone(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--weight", type=float, default=0.1, help="lambda of the CPR run")
    parser.add_argument("--negatives_grad", action="store_true", help="CPR run: gradients through the negatives too")
    parser.add_argument("--routing_grad", action="store_true",
                        help="CPR run: let the regulariser reach the routers (off by default: contrastive_routing_grad)")
    parser.add_argument("--forced_routing", action="store_true",
                        help="both runs: degradation i always uses prompt component i (see the module docstring)")
    parser.add_argument("--loss", default="ratio", choices=CONTRASTIVE_LOSS_FORMS,
                        help="CPR run: the regulariser's form (CPLConfig.contrastive_loss)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: more threads only add synchronisation on a shared machine
    feature_dir = save_feature_network(tempfile.mkdtemp(prefix="cpl-drift-features-"))
    summary = []
    for seed in args.seeds:
        for weight in (0.0, args.weight):
            start = time.perf_counter()
            history = run(
                weight, seed, args.steps, args.every, feature_dir, args.negatives_grad and weight > 0,
                args.routing_grad and weight > 0, args.forced_routing, args.loss,
            )
            label = "L1 only" if weight == 0 else f"L1 + {weight} CPR ({args.loss})"
            print(f"seed {seed}, {label} ({time.perf_counter() - start:.1f} s):")
            for step, cosine, pool_cosine, routing in history:
                print(f"  step {step:4d}  cosine between degradations' prompts {cosine:.4f}  between prompt "
                      f"components {pool_cosine:.4f}  routing {routing}")
            summary.append((seed, weight, history[0][1], history[-1][1], history[0][2], history[-1][2]))
    print("seed  lambda  chosen cos@0  chosen cos@end  drop  | components cos@0  cos@end  drop")
    for seed, weight, first, last, pool_first, pool_last in summary:
        print(f"{seed:4d}  {weight:6.2f}  {first:12.4f}  {last:14.4f}  {first - last:.4f}  | {pool_first:16.4f}  "
              f"{pool_last:7.4f}  {pool_first - pool_last:.4f}")


if __name__ == "__main__":
    main()
