"""A tiny quickstart variant for subprocess tests: ResNet-10 at width 8."""
from configs import quickstart
from tests import helpers


def get_config():
  c = quickstart.get_config()
  c.unlock()
  c.model_kwargs.stage_sizes = (1, 1, 1, 1)
  c.model_kwargs.width = 8
  c.model_kwargs.stem = 'torchvision'
  c.shapes_train_size = 512
  c.shapes_eval_size = 64
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_train_steps = 8
  c.warmup_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 1000
  c.compilation_cache_dir = helpers.xla_cache_dir()
  c.lock()
  return c
