"""The built-in methods. Each is a declaration on the one loop; see Method for the fields."""
from __future__ import annotations

import torch

from ..distributed import average, average_gradients
from ..errors import ConfigError
from ..regularizers import FisherTrace, FisherWeightedDrift, HeadAlignment, MaskL1Drift, fisher_diagonal
from .base import Method, StepContext, register, sgd_step


def nft_regularizers(setup):
    cfg = setup.cfg
    eta = cfg.eta_c if cfg.eta_c is not None else cfg.eta_c_base / max(setup.samples_per_class, 1.0)
    return [MaskL1Drift(eta)] if eta > 0 else []


def _sft_regularizers(setup):
    cfg, params = setup.cfg, setup.tunables
    regs = []
    if cfg.eta_f > 0:
        regs.append(FisherTrace(cfg.eta_f, cfg.fisher_every, params, setup.generator))
    if cfg.eta_r > 0:
        regs.append(FisherWeightedDrift(cfg.eta_r, params, fisher_diagonal(setup, params, cfg.batch_size)))
    return regs


def sam_step(ctx: StepContext) -> dict[str, torch.Tensor]:
    """Sharpness-aware minimisation: step with the gradient taken at the worst point within rho."""
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    loss, terms = ctx.objective()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params)  # the shift uses the global batch's gradient in a distributed run
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    scale = ctx.setup.cfg.sam_rho / (torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) + 1e-12)
    with torch.no_grad():
        shifts = [g * scale for g in grads]
        for p, e in zip(params, shifts):
            p.add_(e)
    ctx.optimizer.zero_grad(set_to_none=True)
    sharp_loss, _ = ctx.objective()
    sharp_loss.backward()
    with torch.no_grad():
        for p, e in zip(params, shifts):
            p.sub_(e)
    ctx.optimizer.step()
    return {"loss": loss, **terms, "sharp_loss": sharp_loss}


def anp_step(ctx: StepContext) -> dict[str, torch.Tensor]:
    """Adversarial neuron perturbation: maximise the loss over neuron noise within eps, then update
    masks on alpha * natural loss + (1 - alpha) * perturbed loss (Wu & Wang, NeurIPS 2021)."""
    cfg, wrappers = ctx.setup.cfg, list(ctx.setup.wrapped.values())
    noise = [p for w in wrappers for p in w.adversarial()]
    eps = cfg.anp_eps
    if eps > 0:
        with torch.no_grad():
            for n in noise:
                n.copy_(torch.rand(n.shape, generator=ctx.setup.generator).to(n) * 2 * eps - eps)
        for w in wrappers:
            w.perturb = True
        for _ in range(cfg.anp_steps):
            for n in noise:
                n.requires_grad_(True)
            grads = average(list(torch.autograd.grad(ctx.task_loss(), noise)))
            with torch.no_grad():
                for n, g in zip(noise, grads):
                    n.add_(eps / cfg.anp_steps * g.sign()).clamp_(-eps, eps)
                    n.requires_grad_(False)
        perturbed = ctx.task_loss()
    else:
        perturbed = torch.zeros(())
    for w in wrappers:
        w.perturb = False
    natural = ctx.task_loss()
    loss = cfg.anp_alpha * natural + (1 - cfg.anp_alpha) * perturbed
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    return {"loss": loss, "task_loss": natural, "perturbed_loss": perturbed}


@torch.no_grad()
def anp_prune(setup) -> None:
    """Prune by threshold: units whose mask fell below it are removed, the others restored to 1."""
    for w in setup.wrapped.values():
        w.mask.copy_((w.mask >= setup.cfg.anp_threshold).to(w.mask))


NFT_DEFAULTS = dict(steps=1000, lr=0.05, momentum=0.95, lr_schedule="cosine", lr_min=0.02, augment="mix")

register(Method(
    name="nft",
    reparam="neuron_mask",
    description="Neural mask Fine-Tuning: MixUp loss on per-neuron masks in [mu(l), 1] with L1 drift penalty",
    defaults=NFT_DEFAULTS,
    regularizers=nft_regularizers,
))

register(Method(
    name="ft",
    reparam="full",
    description="vanilla fine-tuning of all weights with cross-entropy on the clean set",
    defaults=dict(steps=1000, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant", augment="basic"),
))

register(Method(
    name="ft_sam",
    reparam="full",
    description="fine-tuning with sharpness-aware minimisation (two forward/backward passes per step)",
    defaults=dict(steps=1000, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant", augment="basic",
                  sam_rho=0.05),
    step=sam_step,
))

register(Method(
    name="anp",
    reparam="perturbed_mask",
    description="Adversarial Neuron Pruning: masks trained under adversarial neuron noise, then pruned by threshold",
    defaults=dict(steps=2000, lr=0.2, momentum=0.9, lr_schedule="constant", augment="basic", schedule="none",
                  anp_eps=0.4, anp_alpha=0.2, anp_threshold=0.2),
    step=anp_step,
    finish=anp_prune,
))

register(Method(
    name="sft",
    reparam="full",
    description="Fisher-guided Smooth Fine-Tuning: CE + eta_F Tr(F) (every k steps) + Fisher-weighted drift",
    defaults=dict(steps=1000, lr=0.01, momentum=0.9, lr_schedule="step", lr_step_every=0.4, lr_step_gamma=0.1,
                  augment="basic", eta_f=1e-3, eta_r=5.0, fisher_every=10),
    regularizers=_sft_regularizers,
))

register(Method(
    name="fast_sft",
    reparam="spectral_shift",
    description="fast SFT: the SFT objective over singular-value shifts of every targeted weight matrix",
    defaults=dict(steps=1000, lr=0.05, momentum=0.9, lr_schedule="step", lr_step_every=0.4, lr_step_gamma=0.1,
                  augment="basic", eta_f=1e-3, eta_r=5.0, fisher_every=10),
    regularizers=_sft_regularizers,
))

def _fst_prepare(setup) -> None:
    if setup.classifier is None:
        raise ConfigError("fst needs an output layer (Linear or Conv) to re-initialise; none was found")
    head = setup.model.get_submodule(setup.classifier)
    setup.original_head = head.weight.detach().clone()
    torch.manual_seed(setup.cfg.seed)
    head.reset_parameters()


def _fst_regularizers(setup):
    head = setup.model.get_submodule(setup.classifier)
    return [HeadAlignment(setup.cfg.fst_alpha, head, setup.original_head)] if setup.cfg.fst_alpha > 0 else []


register(Method(
    name="fst",
    reparam="full",
    description="Feature Shift Tuning: re-initialise the output head, fine-tune all weights, penalise alignment with the old head",
    defaults=dict(steps=1000, lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", lr_min=0.0,
                  augment="basic", fst_alpha=0.2),
    prepare=_fst_prepare,
    regularizers=_fst_regularizers,
))

register(Method(
    name="clean_subspace",
    reparam="full",
    description="project every Linear/Conv weight onto the subspace its clean inputs span, then re-estimate "
                "BatchNorm statistics; no training (the share of energy kept is chosen on held-out clean accuracy)",
    defaults=dict(augment="none", project_first=True),
    trains=False,
))

register(Method(
    name="subspace_nft",
    reparam="neuron_mask",
    description="the clean-subspace projection, then NFT, then BatchNorm statistics re-estimated on the clean "
                "set: the projection cuts pathways clean data leaves silent, NFT the ones it drives",
    defaults={**NFT_DEFAULTS, "project_first": True, "bn_recalibrate": True},
    regularizers=nft_regularizers,
))

register(Method(
    name="train",
    reparam="full",
    description="training from scratch or further training of all weights (used to build victim models)",
    defaults=dict(lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", lr_min=0.0, augment="basic"),
))
