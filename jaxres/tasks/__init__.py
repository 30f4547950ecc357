"""Tasks: what differs between classification and segmentation.

The loop in `jaxres.trainer` owns everything a task shares (mesh, state,
start-up order, checkpoints, signals, progress, evaluation cadence). A task is
a class built from the config that supplies only what differs:

  name, accuracy_key         the task's name; the train metric in progress lines
  check_config(num_classes)  raise ConfigError for bad task fields
  load_data(pi, pc)          the input pipeline, built once: num_train_examples,
                             num_classes, class_names, train_iter_fn(start_step),
                             eval_iter_fn()
  input_shape(ds)            one example's shape, to initialise the model
  training_model(model)      the module trained: the model, or the model with
                             training-only parts (an auxiliary head)
  dataset_info(ds)           what `jaxres.predict` needs, saved as dataset.json
  optimizer(lr_fn, params_shape, durations)   the optax transformation
  train_phases(ds, lr_fn, durations)  [(end_step or None, train_step)]: pure
                             `train_step(state, batch, rng) -> (state, metrics)`
                             used while step < end_step
  eval_step(ds, dp)          (pure eval step, its out_shardings)
  evaluate(eval_fn, state, ds, dp, step, writer)  -> scalar metrics, logged

Adding a task is one new module here and one line in TASKS.
"""
from jaxres.config_checks import ConfigError

TASKS = {
    'classification': ('jaxres.tasks.classification', 'Classification'),
    'segmentation': ('jaxres.tasks.segmentation', 'Segmentation'),
}


def get_task(config):
  """The task object for config.task; an unknown name is a ConfigError."""
  import importlib  # pylint: disable=g-import-not-at-top
  if config.task not in TASKS:
    raise ConfigError(f'config.task={config.task!r}; choose one of '
                      f'{", ".join(TASKS)}.')
  module, name = TASKS[config.task]
  return getattr(importlib.import_module(module), name)(config)
