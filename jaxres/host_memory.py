"""Host memory: keep XLA:CPU's step buffers mapped between steps (glibc only).

XLA:CPU allocates each execution's temporary buffer (one block; 347 MiB for
the quickstart's step, gigabytes for ResNet-50) with `posix_memalign` from the
worker thread that runs the program. glibc serves a block that large from a
thread arena only by `mmap`, and `free` gives it back with `munmap`; the next
step maps it again and the kernel zeroes every page on first touch. Measured
on the quickstart's step (2 threads, experiments/BENCHMARKS.md, "Host memory"):
89,000 page faults and 0.32 CPU-s of kernel time per step, 40% of the step.

`keep_step_buffers_mapped` makes every thread allocate from glibc's main arena
(M_ARENA_MAX=1), which grows with brk and keeps freed memory for reuse
(M_MMAP_MAX=0; M_TRIM_THRESHOLD=-1, never trim): the step's block is mapped
once and reused. (A finite trim threshold is not enough: MobileNetV2's step at
batch 16 frees 2.4 GB at once, above the largest threshold mallopt takes, and
glibc gave it back to the system every step.) The cost: memory the process
frees is kept for reuse, never returned to the system (its size stays at its
peak), and all threads share one arena lock.

It must run before any thread allocates (the arena limit is fixed by the first
thread that asks for an arena), so `jaxres.main` calls it before importing
JAX, TensorFlow or NumPy. JAXRES_MALLOC=default leaves glibc's defaults. On a
system without glibc (macOS, musl) it does nothing.
"""
import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # glibc: -1 turns trimming off.

CHOICES = ('keep', 'default')


def keep_step_buffers_mapped() -> str:
  """Sets glibc's malloc to reuse large blocks; returns what was done.

  'keep': the settings above are in force; 'default': JAXRES_MALLOC=default
  asked for glibc's own; 'unavailable': this C library has no `mallopt`.
  """
  choice = os.environ.get('JAXRES_MALLOC', 'keep')
  if choice not in CHOICES:
    raise ValueError(f'JAXRES_MALLOC={choice!r}: expected one of {CHOICES} '
                     "('keep' reuses XLA's step buffers, 'default' leaves "
                     "glibc's malloc settings).")
  if choice == 'default':
    return 'default'
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return 'unavailable'
  for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                       (_M_TRIM_THRESHOLD, _NEVER_TRIM)):
    if mallopt(param, value) != 1:
      return 'unavailable'
  return 'keep'
