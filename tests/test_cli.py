"""The command line: mistakes exit 2 with one line, before anything heavy."""
import os
import shutil
import subprocess
import sys

import helpers


def _main(*args, cwd=helpers.ROOT, env=None, timeout=120):
  return subprocess.run([sys.executable, '-m', 'jaxres.main', *args], cwd=cwd,
                        env=env or helpers.env(), capture_output=True,
                        text=True, timeout=timeout)


def _one_error(proc) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert 'Traceback' not in proc.stderr
  return lines[0]


def test_mistyped_config_path_names_the_closest_file(tmp_path):
  line = _one_error(_main('--config=configs/quickstrt.py',
                          f'--workdir={tmp_path}/run'))
  assert 'no such config file' in line
  assert 'Did you mean --config=configs/quickstart.py' in line
  line = _one_error(_main('--config=no_folder/quickstart.py',
                          f'--workdir={tmp_path}/run'))
  assert "no folder 'no_folder'" in line
  assert not os.path.exists(tmp_path / 'run')


def test_bad_override_value_and_unknown_field(tmp_path):
  workdir = f'--workdir={tmp_path}/run'
  line = _one_error(_main('--config=configs/quickstart.py', workdir,
                          '--config.batch_size=abc'))
  assert '--config.batch_size=abc' in line
  assert 'config.batch_size takes int values (now ' in line
  line = _one_error(_main('--config=configs/quickstart.py', workdir,
                          '--config.model_kwargs.widht=4'))
  assert "no field 'widht'" in line
  assert 'Did you mean --config.model_kwargs.width?' in line
  line = _one_error(_main('--config=configs/quickstart.py', workdir,
                          '--batch_size=4'))
  assert "Unknown command line flag 'batch_size'" in line
  line = _one_error(_main('--config=configs/quickstart.py'))
  assert '--workdir' in line
  assert not os.path.exists(tmp_path / 'run')


def test_config_package_next_to_the_config_file_wins(tmp_path):
  """A config is read with its own `configs` package, from any directory."""
  project = tmp_path / 'project'
  shutil.copytree(os.path.join(helpers.ROOT, 'configs'), project / 'configs')
  common = project / 'configs' / 'common.py'
  common.write_text(common.read_text().replace('c.seed = 0', 'c.seed = 4321'))
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  line = _one_error(_main(f'--config={project}/configs/quickstart.py',
                          f'--workdir={tmp_path}/run', '--config.seed=x',
                          cwd=elsewhere))
  assert 'config.seed takes int values (now 4321)' in line
  # Outside a clone, configs/X.py is the installed (here: the repository's).
  line = _one_error(_main('--config=configs/quickstart.py',
                          f'--workdir={tmp_path}/run', '--config.seed=x',
                          cwd=elsewhere))
  assert 'config.seed takes int values (now ' in line


def test_library_chatter_only_with_verbose(tmp_path):
  args = ('--config=configs/quickstart.py', f'--workdir={tmp_path}/run',
          '--config.learning_rate=-1')
  # As a user runs it: JAX looks for accelerators and says so at INFO level.
  env = helpers.env()
  for name in ('JAX_PLATFORMS', 'TF_CPP_MIN_LOG_LEVEL'):
    env.pop(name)
  quiet = _main(*args, env=env)
  assert quiet.returncode == 2, quiet.stderr[-3000:]
  assert 'learning_rate' in quiet.stderr
  for chatter in ('port.cc', 'xla_bridge', 'absl::InitializeLog', 'orbax'):
    assert chatter not in quiet.stderr, quiet.stderr
  verbose = _main(*args, '--verbose', env=env)
  assert verbose.returncode == 2
  assert len(verbose.stderr.splitlines()) > len(quiet.stderr.splitlines())
