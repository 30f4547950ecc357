"""VGG16 ('D', no BatchNorm, convs with bias) as in torchvision and the
bubbliiiing/unet-pytorch encoder.

Module names mirror torchvision state-dict keys (replace '_' with '.'):
  features_{k}    features.{k}   the 13 convs, k = 0 2 5 7 10 12 14 17 19 21 24 26 28
                                 (torchvision indices: ReLUs and pools fill the gaps)
  classifier_0/3/6 classifier.0/3/6  Linear layers (classifier only)
classifier_0 needs its rows permuted: torch flattens NCHW (C, H, W) and this
model flattens NHWC (H, W, C), so kernel = weight.reshape(4096, 512, 7, 7)
.transpose(2, 3, 1, 0).reshape(25088, 4096).

Backbone features (num_classes=None), taken before each max pool; the last
pool is not applied: 'stride1' 64ch, 'stride2' 128, 'stride4' 256,
'stride8' 512, 'stride16' 512.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxres.models import layers
from jaxres.models import pooling


class VGG(nn.Module):
  """Stage i has stage_sizes[i] 3x3 convs of width * min(2**i, 8) channels."""
  stage_sizes: Sequence[int] = (2, 2, 3, 3, 3)
  num_classes: Optional[int] = 1000
  output_stride: int = 32
  width: int = 64
  classifier_width: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    layers.check_output_stride(self.output_stride, allowed=(32,))
    conv = functools.partial(
        layers.make_conv(self.dtype, self.param_dtype, use_bias=True),
        kernel_size=(3, 3), padding=layers.padding(3))
    features = {}
    index = 0  # Position in torchvision's `features` Sequential.
    for i, num_convs in enumerate(self.stage_sizes):
      if i > 0:
        x = pooling.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
        index += 1
      for _ in range(num_convs):
        x = nn.relu(conv(self.width * min(2**i, 8), name=f'features_{index}')(x))
        index += 2
      features[f'stride{2**i}'] = x

    if self.num_classes is None:
      return features
    x = pooling.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    x = pooling.adaptive_avg_pool(x, (7, 7))
    x = x.reshape(x.shape[0], -1)
    dense = functools.partial(
        nn.Dense, param_dtype=self.param_dtype,
        kernel_init=layers.dense_kernel_init)
    for name in ('classifier_0', 'classifier_3'):
      x = nn.relu(dense(self.classifier_width, dtype=self.dtype, name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, dtype=jnp.float32, name='classifier_6')(x)


VGG16 = functools.partial(VGG, stage_sizes=(2, 2, 3, 3, 3))

MODELS = {
    'vgg16': VGG16,
}


# ---------------------------------------------------------------------------
# PyTorch weights (read by jaxres.weights): torchvision's names follow the
# generic rule features_0 -> features.0, so no torch_name is needed.
# ---------------------------------------------------------------------------

TORCH_SIGNATURE = 'features_0'  # A flax module only VGG has.
CLASSIFIER = 'classifier_6'  # Gives the class logits.


def torch_weight(name: str, weight):
  """torchvision flattens (C, 7, 7) before classifier.0; this model (7, 7, C)."""
  if name != 'classifier.0' or weight.ndim != 2 or weight.shape[1] % 49:
    return weight
  out, channels = weight.shape[0], weight.shape[1] // 49
  return weight.reshape(out, channels, 7, 7).transpose(0, 2, 3, 1).reshape(
      out, -1)


# Files holding a VGG16 (more in unet.py).
TORCH_LAYOUTS = (
    dict(description='torchvision VGG', prefix='',
         classifier_keys=('classifier.*',)),
)
