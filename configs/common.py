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
  # Host-to-device image dtype ('bfloat16' halves the traffic; TFDS, folders
  # and synthetic data).
  c.input_dtype = 'float32'

  # Data.
  c.dataset = 'imagenet2012'
  c.data_dir = optional(str)
  c.num_classes = optional(int)  # None: taken from the dataset.
  c.image_size = 224
  c.batch_size = 1024  # Global, over all devices and processes.
  c.eval_batch_size = 1024
  c.train_split = optional(str)  # None: the dataset's usual names.
  c.eval_split = optional(str)
  c.on_bad_image = 'stop'  # Or 'skip': count unreadable files and go on.
  c.data_workers = optional(int)  # Decoding threads; None: one per core.
  c.prefetch_batches = 2  # Batches prepared ahead on the host.
  # The embedded generated datasets ('shapes', 'shapes_seg'): examples drawn.
  c.shapes_train_size = 10_000
  c.shapes_eval_size = 2_000

  # Optimisation. learning_rate is per lr_base_batch_size examples.
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.lr_base_batch_size = 256
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 1e-4
  c.adam_b1 = 0.9  # optimizer='adamw' only.
  c.adam_b2 = 0.999
  # 'cosine', 'poly' (power poly_power), 'constant' or 'step' (x0.1 at each
  # of lr_decay_epochs); all after a linear warmup.
  c.schedule = 'cosine'
  c.poly_power = 0.9
  c.lr_decay_epochs = (30, 60, 80)
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
  # Continuing a workdir with other optimizer hyperparameters (learning rate,
  # batch, weight decay, ...) is refused unless this says it is meant.
  c.allow_hparam_changes = False
  # Continuing a workdir with another global batch is refused (the schedule
  # and the data order depend on it) unless this is set: the step counter is
  # then rescaled to keep the examples seen, the learning rate and durations
  # in epochs/examples are recomputed, old checkpoints are moved aside.
  c.allow_batch_size_change = False
  # Persistent XLA compilation cache ("" disables; None: ~/.cache/jaxres/xla).
  c.compilation_cache_dir = optional(str)

  # Initialisation from a converted PyTorch file or a jaxres checkpoint.
  c.init_from = optional(str)
  c.init_backbone_only = False
  return c


def classification_config() -> ml_collections.ConfigDict:
  """The base plus the fields only classification reads."""
  c = base_config()
  c.task = 'classification'
  c.label_smoothing = 0.1
  c.shuffle_buffer = 16_384  # TFDS record shuffle buffer (examples).
  # How processes split the TFDS training stream: 'shards' (each reads 1/P of
  # the records; the order depends on P, so a run continues only on P
  # processes), 'stream' (each reads every record, decodes its own rows; the
  # order does not depend on P) or 'auto' (stream with one process, shards
  # with several, stream when continuing a run whose order is global).
  c.tfds_read = 'auto'

  # Augmentation (TFDS and folder datasets; jaxres/data/augment.py). Every
  # draw is a function of (seed, step, example position): resume is exact.
  # 'none' | 'randaugment' (timm rand-m{m}-n{n}-mstd{mstd}-inc1) |
  # 'trivialaugment' (torchvision TrivialAugmentWide) | 'autoaugment'
  # (ImageNet policy).
  c.augment = 'none'
  c.randaugment_n = 2  # Ops per image.
  c.randaugment_m = 9.0  # Magnitude on timm's 0-10 scale.
  c.randaugment_mstd = 0.0  # timm's per-op magnitude noise std (inf: uniform).
  c.random_erasing = 0.0  # Probability; timm 'pixel' mode (N(0, 1) fill).
  # Eval: shorter side resized to image_size / eval_crop_pct, centre crop.
  # None keeps each pipeline's rule: TFDS image_size / (image_size + 32),
  # folder 0.875 (both 224/256 at 224).
  c.eval_crop_pct = optional(float)
  # Train and eval resizes: 'bilinear' | 'bicubic'. None keeps each
  # pipeline's: TFDS bicubic, folder bilinear.
  c.interpolation = optional(str)
  c.train_image_size = optional(int)  # Train crop side; None: image_size.

  # Modern recipes
  c.mixup_alpha = 0.0  # Mixup lambda ~ Beta(a, a) per batch; 0: no Mixup.
  c.cutmix_alpha = 0.0  # CutMix lambda ~ Beta(a, a) per batch; 0: no CutMix.
  c.mixup_prob = 1.0  # Probability that a batch is mixed at all (timm's prob).
  c.mixup_switch_prob = 0.5  # With both alphas: P(CutMix) over P(Mixup).
  c.loss = 'ce'  # 'ce': softmax, soft targets; 'bce': sigmoid per class (timm).
  c.bce_target_thresh = optional(float)  # 'bce': target > t -> 1, else 0.
  c.ema_decay = 0.0  # EMA of params and BN statistics per update; 0: no EMA.
  c.ema_every_steps = 1  # Update the EMA every this many optimizer steps.
  c.ema_warmup_steps = optional(int)  # The EMA copies the model until then
  c.ema_warmup_epochs = optional(float)  # (torchvision: the LR warmup);
  c.ema_warmup_examples = optional(int)  # unset: averages from step 1.
  c.eval_use_ema = False  # --mode=eval evaluates the EMA weights, not the raw.
  # Micro-batches per optimizer step (batch_size stays the global batch per
  # step; memory holds batch_size / K). Gradients are averaged over the K;
  # BatchNorm normalises each micro-batch with its own statistics and updates
  # its running averages K times per step. LR schedule and EMA: once per step.
  c.grad_accum_steps = 1
  c.wd_exclude_bias_norm = True  # No weight decay on biases and norm params.
  c.lars_trust_coefficient = 0.001  # optimizer='lars' only.
  return c
