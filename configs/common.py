"""Fields shared by every jaxres config; experiment files change a few."""
import ml_collections
from ml_collections import config_dict


def optional(kind):
  """A field that is unset by default but can be set from the command line."""
  return config_dict.placeholder(kind)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'classification'
  c.seed = 0

  # Model: a name from jaxres.models.MODELS plus the keyword arguments it takes.
  c.model = 'resnet50'
  c.model_kwargs = ml_collections.ConfigDict()
  c.dtype = 'float32'  # Compute dtype; parameters are always float32.

  # Data.
  c.dataset = 'imagenet2012'
  c.data_dir = optional(str)
  c.num_classes = optional(int)  # None: taken from the dataset.
  c.image_size = 224
  c.batch_size = 1024  # Global, over all devices and processes.
  c.eval_batch_size = 1024
  c.shuffle_buffer = 16_384
  c.cache = False

  # Optimisation. learning_rate is per lr_base_batch_size examples.
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.lr_base_batch_size = 256
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 1e-4
  c.label_smoothing = 0.1
  c.schedule = 'cosine'
  c.grad_clip_norm = optional(float)

  # Durations: set one of *_steps, *_epochs, *_examples for each.
  c.num_train_epochs = optional(float)
  c.num_train_steps = optional(int)
  c.num_train_examples = optional(int)
  c.warmup_epochs = optional(float)
  c.warmup_steps = optional(int)
  c.warmup_examples = optional(int)
  c.log_every_steps = 100
  c.eval_every_epochs = optional(float)
  c.eval_every_steps = optional(int)
  c.eval_every_examples = optional(int)
  c.checkpoint_every_epochs = optional(float)
  c.checkpoint_every_steps = optional(int)
  c.checkpoint_every_examples = optional(int)
  c.max_checkpoints_to_keep = 3
  # Persistent XLA compilation cache ("" disables; None: ~/.cache/jaxres/xla).
  c.compilation_cache_dir = optional(str)

  # Initialisation from a converted PyTorch file or a jaxres checkpoint.
  c.init_from = optional(str)
  c.init_backbone_only = False
  return c
