"""The auxiliary FCN head: a second, training-only classifier at stride 16.

mmseg's DeepLabV3+ and PSPNet configs add an FCNHead on the backbone's
stride-16 map (ResNet layer3, 1024 channels for ResNet-50; MobileNetV2's
96-channel block 13) whose cross-entropy, weighted 0.4, joins the main loss;
it is thrown away after training. Here the head is 3x3 conv (256, no bias) +
BN + ReLU, channel dropout 0.1 (PyTorch Dropout2d), 1x1 conv (with bias) to
the classes, on the backbone's 'stride16' map (nominal: at output stride 8
that map has stride 8), for every jaxres segmentation model (UNet-VGG16:
its deepest map).

`WithAuxHead` wraps a segmentation model for training only. The model's
variables stay where they are (flax `share_scope`: same names as the bare
model), the head's are added under 'aux_head' in params and batch_stats. In
inference mode (train=False) the wrapper is the bare model: the head is not
run, so its variables are not needed (evaluation drops them; predict, export
and init_from read the bare model, see `jaxres.checkpoint.TRAINING_ONLY`).
In train mode it returns (logits, aux_logits), the latter upsampled to the
input size like the main logits.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models.resize import resize_bilinear

AUX_HEAD = 'aux_head'  # Its top-level name in params and batch_stats.
FEATURES = 'stride16'  # The backbone map it reads (ResNet: layer3).


class FCNHead(nn.Module):
  """mmseg FCNHead with one conv (num_convs=1, concat_input=False)."""
  num_classes: int
  features: int = 256
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.make_conv(self.dtype, self.param_dtype)(
        self.features, (3, 3), padding=layers.padding(3), name='conv')(x)
    x = batchnorm.make_norm(train, self.dtype, self.param_dtype)(name='bn')(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(x)
    x = layers.make_conv(self.dtype, self.param_dtype, use_bias=True)(
        self.num_classes, (1, 1), padding=0, name='cls')(x)
    return x.astype(jnp.float32)


class WithAuxHead(nn.Module):
  """A segmentation model plus a training-only FCNHead on its backbone."""
  model: nn.Module
  aux_head: nn.Module  # Named after the field: 'aux_head' (AUX_HEAD).

  def setup(self):
    nn.share_scope(self, self.model)  # The model's names stay top-level.

  def __call__(self, x, train: bool):
    if not (train or self.is_initializing()):
      return self.model(x, train=train)
    features = {}

    def keep_backbone_features(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (context.method_name == '__call__' and
          context.module.path == ('backbone',) and isinstance(out, dict)):
        features.update(out)
      return out

    with nn.intercept_methods(keep_backbone_features):
      logits = self.model(x, train=train)
    if FEATURES not in features:
      raise ValueError(
          f'The auxiliary head reads the backbone map {FEATURES!r}, which this '
          f'model\'s backbone does not give (it gives {sorted(features)}). '
          'Set config.aux_loss_weight=0.')
    aux = self.aux_head(features[FEATURES], train=train)
    aux = resize_bilinear(aux, x.shape[1:3],
                          getattr(self.model, 'align_corners', False))
    return (logits, aux) if train else logits


def with_aux_head(model: nn.Module, num_classes: int) -> WithAuxHead:
  """`model`, whose submodule 'backbone' gives a 'stride16' map, with an
  auxiliary head on that map."""
  return WithAuxHead(model, FCNHead(
      num_classes, dtype=model.dtype, param_dtype=model.param_dtype))
