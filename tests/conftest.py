"""Shared test set-up: 8 CPU devices for sharding tests, quiet TensorFlow."""
import os
import sys
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# Tiny test models: XLA's backend optimisations cost more compile time than
# they save at run time.
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent XLA cache for the test runs (subprocesses and both xdist
# workers): the tiny models compile identically in dozens of runs. The key
# covers the program, the flags and the jax version, so a stale entry is never
# used; JAXRES_TEST_XLA_CACHE= (empty) turns it off.
os.environ.setdefault('JAXRES_TEST_XLA_CACHE', os.path.join(
    tempfile.gettempdir(), f'jaxres-test-xla-cache-{os.getuid()}'))
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
