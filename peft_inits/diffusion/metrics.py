"""DreamBooth-style metrics for generated images: subject fidelity, prompt fidelity, style fidelity, diversity.

- **subject fidelity**: mean pairwise cosine of generated vs reference-subject image features (DreamBooth's DINO /
  CLIP-I). Glyph world: the judge's pooled features; real SD: DINO's CLS token (CLIP image embeddings without DINO).
- **prompt fidelity** (the CLIP-T role): glyph world: the judge's probability of each prompted attribute value;
  real SD: CLIP image-text cosine.
- **style fidelity**: mean pairwise cosine of Gram matrices of generated vs style-reference images, with the relative
  `gram_distance` of the mean Gram matrices alongside. Glyph world: the judge's first stage; real SD: DINO's first
  layer tokens.
- **diversity** (DreamBooth's DIV role): mean pairwise 1 − cos of generated-image features.

Every score is a plain mean over image pairs (or images), so identical sets of identical images score 1 on the
similarities and 0 on diversity, and a set never scores higher against others than against itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class Scorer(Protocol):
    """What the metrics need from a feature model."""

    def features(self, images: Sequence[Any]) -> Tensor: ...  # (N, D), any scale

    def grams(self, images: Sequence[Any]) -> Tensor: ...  # (N, C, C)

    def prompt_scores(self, images: Sequence[Any], prompts: Sequence[Any]) -> Tensor: ...  # (N,), in [0, 1] or cos


def mean_cosine(a: Tensor, b: Tensor, *, exclude_diagonal: bool = False) -> float:
    """Mean cosine similarity over all pairs (a_i, b_j); `exclude_diagonal` (a is b) leaves the i = j pairs out."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("mean_cosine needs two non-empty sets of features")
    sims = F.normalize(a.double().flatten(1), dim=1) @ F.normalize(b.double().flatten(1), dim=1).T
    if exclude_diagonal:
        if sims.shape[0] != sims.shape[1] or sims.shape[0] < 2:
            raise ValueError("excluding the diagonal needs one set of at least two images")
        return float((sims.sum() - sims.diagonal().sum()) / (sims.numel() - len(sims)))
    return float(sims.mean())


def subject_fidelity(generated: Tensor, references: Tensor) -> float:
    """DreamBooth's DINO / CLIP-I: mean pairwise cosine between generated and reference-subject features."""
    return mean_cosine(generated, references)


def diversity(generated: Tensor) -> float:
    """Mean pairwise 1 − cosine among generated images (0: all the same image)."""
    return 1.0 - mean_cosine(generated, generated, exclude_diagonal=True)


def gram_distance(generated: Tensor, references: Tensor) -> float:
    """‖mean Gram(generated) − mean Gram(references)‖_F / ‖mean Gram(references)‖_F (0: the same style statistics)."""
    reference = references.double().mean(0)
    return float((generated.double().mean(0) - reference).norm() / reference.norm().clamp_min(1e-12))


def style_fidelity(generated: Tensor, references: Tensor) -> float:
    """Mean pairwise cosine of the (flattened) Gram matrices of generated and style-reference images."""
    return mean_cosine(generated, references)


def score(
    scorer: Scorer,
    generated: Sequence[Any],
    *,
    prompts: Sequence[Any] | None = None,
    subject_references: Sequence[Any] | None = None,
    style_references: Sequence[Any] | None = None,
) -> dict[str, float]:
    """All metrics that the given references allow, for one set of generated images (one row of a table)."""
    features = scorer.features(generated)
    result: dict[str, float] = {}
    if len(generated) >= 2:
        result["diversity"] = diversity(features)
    if subject_references is not None:
        result["subject_fidelity"] = subject_fidelity(features, scorer.features(subject_references))
    if style_references is not None:
        grams, reference_grams = scorer.grams(generated), scorer.grams(style_references)
        result["style_fidelity"] = style_fidelity(grams, reference_grams)
        result["gram_distance"] = gram_distance(grams, reference_grams)
    if prompts is not None:
        if len(prompts) != len(generated):
            raise ValueError(f"{len(generated)} images but {len(prompts)} prompts: give one prompt per image")
        result["prompt_fidelity"] = float(scorer.prompt_scores(generated, prompts).double().mean())
    return result


# ------------------------------------------------------------------------------------------------ scorers


def _gram(maps: Tensor) -> Tensor:
    flat = maps.double().flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def _pixels(images: Sequence[Any]) -> Tensor:
    """PIL images / HWC uint8 arrays → (N, 3, H, W) in [-1, 1]."""
    arrays = np.stack([np.asarray(image.convert("RGB") if hasattr(image, "convert") else image) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class JudgeScorer:
    """Scores with the glyph world's judge; a prompt is a mapping {attribute: value} (e.g. {'subject': 'Q'})."""

    def __init__(self, judge) -> None:
        self.judge = judge.eval()

    @torch.no_grad()
    def features(self, images: Sequence[Any]) -> Tensor:
        return self.judge.features(_pixels(images))

    @torch.no_grad()
    def grams(self, images: Sequence[Any]) -> Tensor:
        return _gram(self.judge.maps(_pixels(images))[0])

    @torch.no_grad()
    def probabilities(self, images: Sequence[Any]) -> dict[str, Tensor]:
        return {name: logits.softmax(-1) for name, logits in self.judge(_pixels(images)).items()}

    def prompt_scores(self, images: Sequence[Any], prompts: Sequence[Mapping[str, str]]) -> Tensor:
        """Per image: the mean probability of the prompted value over the attributes its prompt names."""
        probabilities = self.probabilities(images)
        scores = []
        for index, prompt in enumerate(prompts):
            columns = {attribute: self._index(attribute, value) for attribute, value in prompt.items()}
            values = [probabilities[attribute][index, column] for attribute, column in columns.items()]
            if not values:
                raise ValueError(f"prompt {index} names no attribute")
            scores.append(torch.stack(values).mean())
        return torch.stack(scores)

    def accuracy(self, images: Sequence[Any], prompts: Sequence[Mapping[str, str]]) -> dict[str, float]:
        """Per attribute: the fraction of images whose top-1 judged value is the prompted one."""
        probabilities = self.probabilities(images)
        hits: dict[str, list[bool]] = {}
        for index, prompt in enumerate(prompts):
            for attribute, value in prompt.items():
                predicted = int(probabilities[attribute][index].argmax())
                hits.setdefault(attribute, []).append(predicted == self._index(attribute, value))
        return {attribute: float(np.mean(values)) for attribute, values in hits.items()}

    def _index(self, attribute: str, value: str) -> int:
        classes = self.judge.classes
        if attribute not in classes:
            raise ValueError(f"the judge knows no attribute {attribute!r}; it knows {', '.join(classes)}")
        if value not in classes[attribute]:
            raise ValueError(f"the judge knows no {attribute} {value!r}; it knows {', '.join(classes[attribute])}")
        return classes[attribute].index(value)


class ClipDinoScorer:
    """CLIP (CLIP-I, CLIP-T) and DINO (subject fidelity, diversity, Gram style) from local checkpoint folders.

    `features` are DINO's CLS token when a DINO path is given, else CLIP image embeddings; prompts are text.
    """

    def __init__(self, clip: str | None = None, dino: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

        if clip is None and dino is None:
            raise ValueError("ClipDinoScorer needs a CLIP path (--clip) and/or a DINO path (--dino)")
        self.clip = self.clip_processor = self.dino = self.dino_processor = None
        if clip is not None:
            self.clip = CLIPModel.from_pretrained(_local(clip, "--clip")).eval()
            self.clip_processor = CLIPProcessor.from_pretrained(_local(clip, "--clip"))
        if dino is not None:
            self.dino = AutoModel.from_pretrained(_local(dino, "--dino")).eval()
            self.dino_processor = AutoImageProcessor.from_pretrained(_local(dino, "--dino"))

    @torch.no_grad()
    def clip_image(self, images: Sequence[Any]) -> Tensor:
        self._need(self.clip, "--clip")
        inputs = self.clip_processor(images=list(images), return_tensors="pt")
        return _embedding(self.clip.get_image_features(pixel_values=inputs["pixel_values"]))

    @torch.no_grad()
    def clip_text(self, prompts: Sequence[str]) -> Tensor:
        self._need(self.clip, "--clip")
        inputs = self.clip_processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True)
        return _embedding(
            self.clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        )

    @torch.no_grad()
    def _dino_states(self, images: Sequence[Any]):
        self._need(self.dino, "--dino")
        inputs = self.dino_processor(images=list(images), return_tensors="pt")
        return self.dino(pixel_values=inputs["pixel_values"], output_hidden_states=True)

    def features(self, images: Sequence[Any]) -> Tensor:
        if self.dino is None:
            return self.clip_image(images)
        return self._dino_states(images).last_hidden_state[:, 0]

    def grams(self, images: Sequence[Any]) -> Tensor:
        if self.dino is None:
            raise ValueError("style statistics (Gram matrices) need a DINO path (--dino)")
        tokens = self._dino_states(images).hidden_states[1][:, 1:]  # first layer's patch tokens
        return _gram(tokens.transpose(1, 2))

    def prompt_scores(self, images: Sequence[Any], prompts: Sequence[str]) -> Tensor:
        """CLIP-T: cosine of each image's CLIP embedding with its prompt's."""
        return F.cosine_similarity(self.clip_image(images), self.clip_text(prompts), dim=-1)

    @staticmethod
    def _need(model, flag: str) -> None:
        if model is None:
            raise ValueError(f"this metric needs {flag} PATH")


def _embedding(output: Any) -> Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x returned the tensor."""
    return output if isinstance(output, Tensor) else output.pooler_output


def _local(path: str, flag: str) -> str:
    from pathlib import Path

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {folder} is not a local transformers checkpoint (no config.json)")
    return str(folder)
