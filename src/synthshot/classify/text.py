"""Text classifier weights: CLIP text features of class prompts, one row per class.

A class's row is the mean of its prompts' L2-normalised text features, normalised again (CLIP's
prompt-ensemble recipe); with one prompt per class it is that prompt's normalised feature. The same
code serves the zero-shot text baseline (no gradient, `text_classifier_weights`) and fine-tuning
with LoRA on the text tower (`encode_class_prompts` under autograd, on tokens made once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthshot.errors import DataError

# CoOp's template for a folder of images without a registry entry.
GENERIC_TEMPLATE = "a photo of a {}."


def class_templates(dataset: str | None, which: str = "single") -> list[str]:
    """The prompt templates of a registry dataset: its first zero-shot template (CoOp's single
    template) or all of them (`ensemble`); a generic one when the dataset is not in the registry."""
    if which not in ("single", "ensemble"):
        raise ValueError(f"which must be 'single' or 'ensemble', got {which!r}")
    if dataset is None:
        return [GENERIC_TEMPLATE]
    from synthshot.data.registry import get_dataset

    templates = list(get_dataset(dataset).zeroshot_templates)
    return templates[:1] if which == "single" else templates


def class_prompts(class_names: dict[str, str], templates: list[str]) -> dict[str, list[str]]:
    """class key -> its prompts, one per template, from the prompt names (`FewShotData.class_names`)."""
    if not templates:
        raise ValueError("no templates given")
    return {key: [t.format(name) for t in templates] for key, name in class_names.items()}


@dataclass
class PromptTokens:
    """Tokenized prompts of all classes: `owner[i]` is the class (row) prompt i belongs to."""

    input_ids: torch.Tensor  # [P, L]
    attention_mask: torch.Tensor  # [P, L]
    owner: torch.Tensor  # [P], class indices
    num_classes: int

    def to(self, device) -> PromptTokens:
        return PromptTokens(self.input_ids.to(device), self.attention_mask.to(device), self.owner.to(device),
                            self.num_classes)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice) -> PromptTokens:
        return PromptTokens(self.input_ids[rows], self.attention_mask[rows], self.owner[rows], self.num_classes)


def tokenize_prompts(tokenizer, prompts: dict[str, list[str]]) -> PromptTokens:
    """Tokenize every class's prompts (padded to the longest, truncated to the model's length)."""
    texts, owner = prompt_owners(prompts)
    max_length = min(getattr(tokenizer, "model_max_length", 77) or 77, 77)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return PromptTokens(batch["input_ids"], batch["attention_mask"], owner, len(prompts))


def text_embeddings(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Projected text features of a transformers `CLIPModel` (what `get_text_features` computes)."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return model.text_projection(pooled)


def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features of a transformers `CLIPModel` (what `get_image_features` computes)."""
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def prompt_owners(prompts: dict[str, list[str]]) -> tuple[list[str], torch.Tensor]:
    """Every class's prompts in one list, and the class (row) index of each, [P]; every class
    needs at least one prompt."""
    empty = [key for key, texts in prompts.items() if not texts]
    if not prompts or empty:
        raise DataError(f"no prompts for the classes {empty or '(none given)'}: give each class at least one prompt")
    texts = [text for texts in prompts.values() for text in texts]
    owner = torch.tensor([i for i, texts in enumerate(prompts.values()) for _ in texts], dtype=torch.long)
    return texts, owner


def class_text_features(features: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The prompt-ensemble recipe, backend-agnostic: prompt features [P, D] (any dtype, not
    normalised) -> class features [C, D] in fp32, each class's row the mean of its prompts'
    normalised features, normalised again. `owner[i]` is prompt i's class. Differentiable."""
    features = F.normalize(features.float(), dim=-1)
    sums = features.new_zeros(num_classes, features.shape[1]).index_add(0, owner.to(features.device), features)
    return F.normalize(sums, dim=-1)


def encode_class_prompts(model, tokens: PromptTokens, batch_size: int | None = None) -> torch.Tensor:
    """Class text features [C, D]: mean of each class's normalised prompt features, normalised.
    Differentiable (no `no_grad` here); `batch_size` bounds how many prompts run at once."""
    step = batch_size or len(tokens)
    features = torch.cat([
        text_embeddings(model, part.input_ids, part.attention_mask).float()
        for part in (tokens.select(slice(i, i + step)) for i in range(0, len(tokens), step))
    ])
    return class_text_features(features, tokens.owner, tokens.num_classes)


@torch.no_grad()
def text_classifier_weights(bundle, class_prompts: dict[str, list[str]], device, batch_size: int = 256) -> torch.Tensor:
    """Normalised text features [C, D] of `class_prompts` (class -> prompts, in label order),
    averaged over each class's prompts, in fp32 on `device`: the zero-shot classifier's weights."""
    model = bundle.model
    was_training = model.training
    model.eval()
    tokens = tokenize_prompts(bundle.tokenizer, class_prompts).to(device)
    weights = encode_class_prompts(model, tokens, batch_size=batch_size)
    model.train(was_training)
    return weights
