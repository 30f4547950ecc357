"""SPMD data parallelism: one `data` mesh axis over every device.

The global batch is split along `data`; the train state is replicated. Inside
`jax.jit` the batch axis is global, so BatchNorm statistics are computed over
the whole global batch on any number of devices and processes.
"""
import collections
import dataclasses
import itertools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class DataParallel:
  mesh: Mesh
  replicated: NamedSharding
  batch: NamedSharding

  @classmethod
  def create(cls, *batch_sizes: int, devices=None) -> 'DataParallel':
    devices = jax.devices() if devices is None else devices
    for size in batch_sizes:
      check_batch_size(size, len(devices))
    mesh = Mesh(np.asarray(devices), ('data',))
    return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P('data')))

  def shard_batch(self, local_batch):
    """Assembles the global batch from each process's local numpy batch."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch, x),
        local_batch)

  def prefetch(self, iterator, size: int = 2):
    """Keeps `size` batches in flight to the devices (transfers are async)."""
    queue = collections.deque()
    iterator = iter(iterator)
    for batch in itertools.islice(iterator, size):
      queue.append(self.shard_batch(batch))
    while queue:
      yield queue.popleft()
      for batch in itertools.islice(iterator, 1):
        queue.append(self.shard_batch(batch))


def check_batch_size(batch_size: int, device_count: int | None = None):
  device_count = device_count or jax.device_count()
  if batch_size <= 0 or batch_size % device_count:
    raise ValueError(
        f'The global batch size {batch_size} must be a positive multiple of '
        f'the device count ({device_count} devices here). Set '
        f'--config.batch_size (and eval_batch_size) to e.g. '
        f'{max(device_count, batch_size // device_count * device_count)}.')
  if batch_size % jax.process_count():
    raise ValueError(f'The global batch size {batch_size} must divide by the '
                     f'process count {jax.process_count()}.')
