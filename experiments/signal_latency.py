r"""How many steps after a signal a run stops: Ctrl-C (SIGINT) and SIGTERM.

Runs the quickstart with a log line per step, sends the signal right after the
line for step --signal_at_step is printed, and reports the step the run saved.

  python experiments/signal_latency.py --signal=INT --signal_at_step=30
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--signal', default='INT', choices=('INT', 'TERM'))
  parser.add_argument('--signal_at_step', type=int, default=30)
  parser.add_argument('--config', default='configs/quickstart.py')
  args = parser.parse_args()
  workdir = tempfile.mkdtemp(prefix='jaxres_signal_')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'jaxres.main', f'--config={args.config}',
       f'--workdir={workdir}', '--config.log_every_steps=1'],
      cwd=ROOT, stderr=subprocess.PIPE, text=True)
  marker = f'step {args.signal_at_step}/'
  for line in proc.stderr:
    if marker in line:
      sent = time.time()
      proc.send_signal(getattr(signal, f'SIG{args.signal}'))
      break
  rest = proc.communicate()[1]
  elapsed = time.time() - sent
  saved = max(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
              if s.isdigit())
  print(f'SIG{args.signal} after the log line of step {args.signal_at_step}: '
        f'saved step {saved} ({saved - args.signal_at_step} steps later), exit '
        f'{proc.returncode}, {elapsed:.1f} s from signal to exit; '
        f'load average {os.getloadavg()[0]:.1f}')
  print([l for l in rest.splitlines() if 'Interrupted' in l or 'Preempted' in l])


if __name__ == '__main__':
  main()
