"""The neural style transfer objective (Gatys et al. 2016) on ImageNet VGG16 features: pure, jittable.

    vgg = load_vgg16_params()
    targets = style_targets(vgg, content, style)          # content features + the style's Gram matrices
    loss, terms = style_transfer_loss(vgg, x, targets)    # scalar; terms: content / style / tv [B]

    L(x) = content_weight * C(x) + style_weight * S(x) + tv_weight * TV(x), per image, where
    C(x)  = mean over h*w*c of (phi_l(x) - phi_l(content))^2 at the content layer l = relu4_2
            (Gatys et al.'s conv4_2, after its ReLU),
    S(x)  = sum over the five style layers l = relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
            (Gatys et al.'s choice, and the book's block{1..5}_conv1) of ||G_l(x) - G_l(style)||_F^2,
            G_l = `gram_matrix` (F^T F / (h w c)), i.e. 4x Gatys's E_l per layer,
    TV(x) = total variation (|differences|^p of neighbouring pixels) divided by the image's h*w*c,
            so the weights mean the same at every image size.
Images are NHWC in [-1, 1] (grey [..., 1] is replicated to RGB by the VGG module). The loss is
the mean over the batch of the per-image L; `terms` keep the per-image values.

The same terms train the feed-forward network (Johnson et al. 2016): there the content target is
the batch itself (`content_features(vgg, batch)`), one set of Gram matrices for every image.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from gdl_jax.nn.vgg import LAYER_NAMES, VGG16Features
from gdl_jax.objectives.perceptual import gram_matrix, total_variation

__all__ = ["GATYS_CONTENT_LAYERS", "GATYS_STYLE_LAYERS", "StyleWeights", "StyleTargets",
           "content_features", "style_grams", "style_targets", "style_transfer_terms",
           "style_layer_terms", "style_transfer_loss"]

GATYS_CONTENT_LAYERS = ("relu4_2",)
GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class StyleWeights:
  """The weights of the three terms, the total variation's power, and the VGG16 layers used."""

  content: float = 1.0
  style: float = 1e3
  tv: float = 1e-3
  tv_power: float = 1.0
  content_layers: tuple[str, ...] = GATYS_CONTENT_LAYERS
  style_layers: tuple[str, ...] = GATYS_STYLE_LAYERS

  def __post_init__(self):
    for name in ("content", "style", "tv"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
        raise ValueError(f"style transfer weight {name}={v!r} must be a finite number >= 0.")
    if not self.tv_power >= 1.0:
      raise ValueError(f"tv_power={self.tv_power!r} must be >= 1 (below 1 the gradient is "
                       "infinite where neighbouring pixels are equal).")
    for what in ("content_layers", "style_layers"):
      layers = tuple(getattr(self, what))
      bad = [l for l in layers if l not in LAYER_NAMES]
      if not layers or bad:
        raise ValueError(f"{what}={layers}: pass one or more VGG16 layer names from {LAYER_NAMES}.")
      object.__setattr__(self, what, layers)


class StyleTargets(NamedTuple):
  """What the image is pulled towards: content features {layer: [1 or B, h, w, c]} and the style's
  Gram matrices {layer: [1, C, C]}."""

  content: dict
  grams: dict


def _features(vgg_params: Mapping, x: jax.Array, layers: Sequence[str]) -> dict:
  return VGG16Features(taps=tuple(layers)).apply({"params": vgg_params}, x)


def content_features(vgg_params: Mapping, x: jax.Array,
                     layers: Sequence[str] = GATYS_CONTENT_LAYERS) -> dict:
  """{layer: VGG16 activation [B, h, w, c]} of images x [B, H, W, C] in [-1, 1]."""
  return _features(vgg_params, x, layers)


def style_grams(vgg_params: Mapping, style: jax.Array,
                layers: Sequence[str] = GATYS_STYLE_LAYERS) -> dict:
  """{layer: Gram matrix [B, C, C]} of style images [B, H, W, C] in [-1, 1]."""
  feats = _features(vgg_params, style, layers)
  return {l: gram_matrix(feats[l]) for l in layers}


def style_targets(vgg_params: Mapping, content: jax.Array, style: jax.Array,
                  weights: StyleWeights = StyleWeights()) -> StyleTargets:
  """The fixed targets of a Gatys optimisation: content [1, H, W, C] and style [1, H', W', C'] in
  [-1, 1] (the two sizes may differ)."""
  return StyleTargets(content_features(vgg_params, content, weights.content_layers),
                      style_grams(vgg_params, style, weights.style_layers))


def style_transfer_terms(vgg_params: Mapping, x: jax.Array, targets: StyleTargets,
                         weights: StyleWeights = StyleWeights()) -> dict[str, jax.Array]:
  """{"content", "style", "tv"}: the three unweighted terms per image [B] (see the module doc),
  from one VGG16 pass over x [B, H, W, C] in [-1, 1]."""
  if x.ndim != 4:
    raise ValueError(f"style transfer takes NHWC image batches [B, H, W, C], got shape {x.shape}.")
  layers = tuple(dict.fromkeys(weights.content_layers + weights.style_layers))
  feats = _features(vgg_params, x, layers)
  content = sum(jnp.mean(jnp.square(feats[l].astype(jnp.float32) - targets.content[l]), axis=(1, 2, 3))
                for l in weights.content_layers)
  style = sum(_gram_errors(feats, targets.grams, weights.style_layers).values())
  tv = total_variation(x.astype(jnp.float32), weights.tv_power) / (x[0].size)
  return {"content": content, "style": style, "tv": tv}


def _gram_errors(feats: dict, grams: Mapping, layers: Sequence[str]) -> dict[str, jax.Array]:
  return {l: jnp.sum(jnp.square(gram_matrix(feats[l]) - grams[l]), axis=(1, 2)) for l in layers}


def style_layer_terms(vgg_params: Mapping, x: jax.Array, grams: Mapping,
                      layers: Sequence[str] = GATYS_STYLE_LAYERS) -> dict[str, jax.Array]:
  """{layer: ||G_l(x) - G_l(style)||_F^2 per image [B]}: the style term S(x) split by layer (their
  sum is `style_transfer_terms(...)["style"]`), to see which scales of the style a result misses."""
  if x.ndim != 4:
    raise ValueError(f"style transfer takes NHWC image batches [B, H, W, C], got shape {x.shape}.")
  missing = [l for l in layers if l not in grams]
  if missing:
    raise ValueError(f"no style Gram matrix for layer(s) {missing}; the targets have {sorted(grams)}.")
  return _gram_errors(_features(vgg_params, x, layers), grams, layers)


def style_transfer_loss(vgg_params: Mapping, x: jax.Array, targets: StyleTargets,
                        weights: StyleWeights = StyleWeights()) -> tuple[jax.Array, dict]:
  """(mean over the batch of content_w * C + style_w * S + tv_w * TV, the per-image terms)."""
  terms = style_transfer_terms(vgg_params, x, targets, weights)
  total = weights.content * terms["content"] + weights.style * terms["style"] + weights.tv * terms["tv"]
  return jnp.mean(total), terms
