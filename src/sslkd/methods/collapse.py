"""Collapse diagnostics logged by the self-distillation methods (DINO, iBOT, MOKD): small batches
collapse DINO-style training, and these numbers show it before the accuracy does."""

from __future__ import annotations

import torch


@torch.no_grad()
def collapse_metrics(
    teacher_probs: torch.Tensor, student_feats: torch.Tensor, student_out: torch.Tensor, teacher_out: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Entropy of the teacher's distribution, per-dimension std of L2-normalised student
    features (collapse -> 0; healthy ~ 1/sqrt(D)), their effective rank (``exp`` of the entropy of
    the normalised singular values of the centred features, Roy & Vetterli 2007: 1 when collapsed
    to a line), teacher/student argmax agreement on the global views."""
    ent = -(teacher_probs * teacher_probs.clamp_min(1e-12).log()).sum(-1).mean()
    z = torch.nn.functional.normalize(student_feats.float().flatten(0, -2), dim=-1)
    if torch.isfinite(z).all():
        sv = torch.linalg.svdvals(z - z.mean(0))
        p = sv / sv.sum().clamp_min(1e-12)
        erank = torch.exp(-(p * p.clamp_min(1e-12).log()).sum())
    else:  # a diverging run: the SVD would fail; the engine's finiteness check names the loss term
        erank = z.new_tensor(float("nan"))
    agree = (student_out[: teacher_out.shape[0]].argmax(-1) == teacher_out.argmax(-1)).float().mean()
    return {"teacher_entropy": ent, "feature_std": z.std(0).mean(), "effective_rank": erank, "agreement": agree}
