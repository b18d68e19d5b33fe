"""CLIP's contrastive objective and its evaluations: symmetric InfoNCE with a learned temperature,
zero-shot classification from class prompts, text-to-image retrieval recall@k.

InfoNCE over a batch of B matching (image_i, text_i) pairs, unit embeddings u_i (images), v_j
(texts), scale s = exp(log_scale) clipped to [1, 100] (CLIP's clip):

  logits_ij = s <u_i, v_j>
  loss = 1/2 [ mean_i CE(logits_i., i) + mean_j CE(logits_.j, j) ]

i.e. each image must pick its own text among the batch's texts and each text its own image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MAX_LOG_SCALE = math.log(100.0)


def clip_logits(img_BxE: jax.Array, txt_BxE: jax.Array, log_scale: jax.Array) -> jax.Array:
  """[B_img, B_txt] scaled cosine similarities (inputs already L2-normalised)."""
  scale = jnp.exp(jnp.clip(log_scale, 0.0, MAX_LOG_SCALE))
  return scale * img_BxE @ txt_BxE.T


def info_nce(img_BxE: jax.Array, txt_BxE: jax.Array, log_scale: jax.Array):
  """Symmetric InfoNCE -> (loss scalar, metrics {loss_i2t, loss_t2i, acc_i2t, acc_t2i, scale})."""
  logits = clip_logits(img_BxE, txt_BxE, log_scale)  # [B, B]
  diag = jnp.diagonal(logits)
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  idx = jnp.arange(logits.shape[0])
  metrics = {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i,
             "acc_i2t": jnp.mean(jnp.argmax(logits, axis=1) == idx),
             "acc_t2i": jnp.mean(jnp.argmax(logits, axis=0) == idx),
             "scale": jnp.exp(jnp.clip(log_scale, 0.0, MAX_LOG_SCALE))}
  return 0.5 * (loss_i2t + loss_t2i), metrics


def zero_shot_predict(img_NxE: jax.Array, class_KxE: jax.Array) -> jax.Array:
  """[N] the class whose prompt embedding is nearest (cosine) to each image."""
  return jnp.argmax(img_NxE @ class_KxE.T, axis=-1)


def recall_at_k(txt_NxE: jax.Array, img_NxE: jax.Array, k: int = 5) -> jax.Array:
  """Text -> image retrieval: share of texts i whose own image i is among the k most similar of
  the N images. Ties count against: the rank is the number of images scoring strictly higher."""
  sim = txt_NxE @ img_NxE.T  # [N_txt, N_img]
  own = jnp.diagonal(sim)
  rank = jnp.sum(sim > own[:, None], axis=1)  # 0 = best
  return jnp.mean(rank < k)
