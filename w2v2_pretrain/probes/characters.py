"""What a representation makes linearly available of the characters: a linear CTC probe scored
by character error rate on held-out utterances.

The probe is deterministic: it starts from a closed-form ridge fit to an even spread of the
characters over each utterance, then trains full batch with AdamW for a fixed number of steps.
The edit distance is torchaudio's.

Shapes: N utterances, T frames, D feature dimension, V characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchaudio.functional import edit_distance

from w2v2_pretrain.probes.linear import LinearBudget, standardiser


def character_error_rate(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Edit distance summed over utterances, divided by the reference characters (spaces
    count): 0 is perfect, 1 is e.g. an empty output; insertions can push it past 1."""
    chars = sum(len(r) for r in refs)
    if chars == 0:
        raise ValueError("character_error_rate: the references hold no characters")
    errors = sum(edit_distance(h, r) for h, r in zip(hyps, refs, strict=True))
    return errors / chars


@dataclass(frozen=True)
class CharacterVocabulary:
    """The probe's output classes: the CTC blank (index 0), then each character."""

    chars: tuple[str, ...]

    @staticmethod
    def of(texts: Sequence[str]) -> CharacterVocabulary:
        return CharacterVocabulary(tuple(sorted({c for t in texts for c in t})))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Character indices (1-based; characters outside the vocabulary are left out)."""
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        return [index[c] for c in text if c in index]

    def decode_greedy(self, best: Sequence[int]) -> str:
        """CTC's greedy decoding of per-frame best classes: merge repeats, drop blanks."""
        out, last = [], 0
        for k in best:
            if k != last and k != 0:
                out.append(self.chars[k - 1])
            last = k
        return "".join(out)


@dataclass(frozen=True)
class CTCProbeResult:
    """A linear CTC probe's character error rate on held-out utterances.

    ``fit_loss``: the CTC loss per target character on the fit set after the last step;
    ``hypotheses``: the greedy transcripts of the held-out utterances.
    """

    cer: float
    fit_loss: float
    num_fit: int
    num_test: int
    num_test_chars: int
    hypotheses: tuple[str, ...]


RIDGE = 10.0  # L2 weight of the warm start's least squares, on standardised features
WARM_SCALE = 10.0  # least-squares outputs are near 0..1; scaled, they are confident logits


def _pad(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T_max, D) zero-padded stack and (N,) lengths of N (T_i, D) tensors."""
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(list(features), batch_first=True), lengths


def peaky_labels(num_frames: int, targets: Sequence[int]) -> torch.Tensor:
    """A guess at a CTC alignment with no model: the S characters at the centres of S equal
    segments of the utterance, blank (0) elsewhere.

    Shape:
        -> (T,) class per frame
    """
    labels = torch.zeros(num_frames, dtype=torch.long)
    if targets:
        S = len(targets)
        centres = ((torch.arange(S) + 0.5) * num_frames / S).long().clamp(max=num_frames - 1)
        labels[centres] = torch.tensor(list(targets), dtype=torch.long)
    return labels


def warm_start(frames: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Ridge regression of one-hot labels on (standardised) frames, in closed form: a linear
    layer's starting weights, with the bias as the last row.

    Shape:
        frames: (N, D), labels: (N,) -> (D + 1, num_classes)
    """
    x = torch.cat([frames.double(), torch.ones(len(frames), 1, dtype=torch.double)], 1)
    y = F.one_hot(labels, num_classes).double()
    gram = x.T @ x + RIDGE * torch.eye(x.shape[1], dtype=torch.double, device=x.device)
    return torch.linalg.solve(gram, x.T @ y).to(frames.dtype)


def _fit_ctc(
    layer: torch.nn.Linear,
    x: torch.Tensor,
    lengths: torch.Tensor,
    targets: Sequence[list[int]],
    budget: LinearBudget,
) -> torch.Tensor:
    """``budget.steps`` full-batch AdamW steps of ``layer`` on the CTC loss per target
    character; the last loss.

    Shape:
        x: (N, T, D), lengths: (N,) -> ()
    """
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([c for t in targets for c in t], dtype=torch.long, device=x.device)
    opt = torch.optim.AdamW(layer.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in range(budget.steps):
            log_probs = layer(x).log_softmax(-1).transpose(0, 1)  # (T, N, V+1)
            loss = F.ctc_loss(
                log_probs,
                flat,
                lengths,
                target_lengths,
                blank=0,
                reduction="sum",
                zero_infinity=True,
            ) / target_lengths.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return loss


def ctc_probe(
    fit: Sequence[torch.Tensor],
    fit_texts: Sequence[str],
    test: Sequence[torch.Tensor],
    test_texts: Sequence[str],
    budget: LinearBudget | None = None,
) -> CTCProbeResult:
    """Train a linear layer from frame features to characters with CTC, score greedy CER.

    The layer starts from a closed-form ridge fit to `peaky_labels` (characters spread evenly
    over each utterance), then trains with CTC for ``budget.steps`` full-batch AdamW steps:
    the warm start reaches in a few dozen steps what zero weights reach in hundreds (the CTC
    loss is what a probe round spends its time on). The vocabulary is the fit transcripts'
    characters; a held-out character outside it counts as an error. Utterances with fewer
    frames than CTC needs for their transcript add no gradient (``zero_infinity``) and are
    scored like any other.

    Shape:
        fit[i]: (T_i, D); test[i]: (T_i, D)
    """
    vocab = CharacterVocabulary.of(fit_texts)
    device = fit[0].device
    targets = [vocab.encode(t) for t in fit_texts]
    frames = torch.cat(list(fit))  # (sum T, D)
    mean, inv = standardiser(frames)
    labels = torch.cat([peaky_labels(len(f), t) for f, t in zip(fit, targets, strict=True)])
    w = warm_start((frames - mean) * inv, labels.to(device), len(vocab)) * WARM_SCALE
    x, lengths = _pad(fit)  # (N, T, D)
    x = (x - mean) * inv
    layer = torch.nn.Linear(x.shape[-1], len(vocab)).to(device)
    with torch.no_grad():
        layer.weight.copy_(w[:-1].T)
        layer.bias.copy_(w[-1])
    loss = _fit_ctc(layer, x, lengths, targets, budget or LinearBudget())
    hyps = []
    with torch.no_grad():
        for f in test:
            best = layer((f - mean) * inv).argmax(-1).tolist()  # (T,)
            hyps.append(vocab.decode_greedy(best))
    return CTCProbeResult(
        cer=character_error_rate(hyps, test_texts),
        fit_loss=float(loss.detach()),
        num_fit=len(fit),
        num_test=len(test),
        num_test_chars=sum(len(t) for t in test_texts),
        hypotheses=tuple(hyps),
    )
