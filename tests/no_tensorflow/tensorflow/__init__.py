"""Put first on PYTHONPATH (helpers.env(without_tensorflow=True)) so that a run
that must not import TensorFlow fails at once if anything imports it."""
raise ImportError('tests/no_tensorflow: this run must not import TensorFlow '
                  '(its data and TensorBoard files need none).')
