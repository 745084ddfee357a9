"""
The scripts' command line. The poor man's configurator (nanoGPT's): a script keeps its settings as globals in one
config block, and

$ python train.py config/train_shakespeare_char.py --batch_size=32 --learning_rate=1e-3

runs the config files (plain Python) over them, then applies the --key=value overrides, in that order
whatever the order on the command line. Every value is type-checked against the default it replaces, and a
key that is not in the config block (a typo) is an error with a suggestion, not silently a new variable.
Then the checks every script shares, and its one way to stop on a bad input: one line, `error: ...`, exit 1
(library code raises ValueError; guard() turns it into that line). A script that runs another (ablate.py,
gpu_check.py) does it with child(), which hands the child a file for that line: the error comes back as JSON,
never read out of the child's printed output.
"""

import ast
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile

ALIASES = {'block_size': 'seq_len', 'n_ctx': 'seq_len', 'context_length': 'seq_len', 'lr': 'learning_rate',
           'iters': 'max_iters', 'num_iters': 'max_iters', 'gamma': 'stages', 'steps_per_block': 'steps'}
SIMPLE = (int, float, bool, str, dict, list, tuple, type(None))


def unknown(key, keys, where, dashes=''):
    near = ALIASES.get(key) if ALIASES.get(key) in keys else next(iter(difflib.get_close_matches(key, keys, 1)), None)
    hint = f"; did you mean {dashes}{near}?" if near else ""
    return f"unknown config key {dashes}{key} {where}{hint} (the keys are in the config block at the top of the script)"


def typecheck(key, val, old, where):
    bad_bool = isinstance(val, bool) != isinstance(old, bool)  # True is an int to Python, not to us
    if old is not None and (bad_bool or not isinstance(val, type(old)) and not (isinstance(val, int) and isinstance(old, float))):
        fail(f"{where} sets {key}={val!r}, which should be a {type(old).__name__}, like the default {old!r}")


def configure(cfg, argv, quiet=False):
    """Apply argv's config files, then its --key=value overrides, to the script's config block cfg (its globals).
    Returns the config keys and the set of keys that argv set (so a resumed run knows what was asked for)."""
    keys = [k for k, v in cfg.items() if not k.startswith('_') and isinstance(v, SIMPLE)]
    if {'-h', '--help'} & set(argv):
        usage(cfg)
    given = set()
    for arg in [a for a in argv if not a.startswith('--')]:
        if not os.path.isfile(arg):
            fail(f"config file {arg} not found (config files are in config/; overrides are written --key=value)")
        if not quiet:
            print(f"overriding config with {arg}")
        ns = {}  # what the file assigns: its own namespace, read over the script's
        try:
            exec(open(arg).read(), cfg, ns)
        except Exception as e:
            fail(f"config file {arg} failed: {type(e).__name__}: {e}")
        for k, v in ns.items():
            if k not in keys and not k.startswith('_') and isinstance(v, SIMPLE):
                fail(unknown(k, keys, f"in {arg}"))
            if k in keys:
                typecheck(k, v, cfg[k], f"config file {arg}")
                cfg[k] = v
                given.add(k)
    for arg in [a for a in argv if a.startswith('--')]:
        key, eq, val = arg[2:].partition('=')
        if not eq and isinstance(cfg.get(key), bool):
            val = 'True'  # a bare --flag switches a boolean on
        if key not in keys:
            fail(unknown(key, keys, "on the command line", '--'))
        try:
            val = val if isinstance(cfg[key], str) else ast.literal_eval(val)  # a text setting takes the text as it is
        except (ValueError, SyntaxError):
            pass  # a plain string
        typecheck(f"--{key}", val, cfg[key], "the command line")
        cfg[key] = val
        given.add(key)
    return keys, given


def usage(cfg):
    """-h / --help: the script's docstring (its commands) and its config block (every setting, its default and what
    it does), then exit."""
    print((cfg.get('__doc__') or '').strip() + '\n')
    lines = open(cfg['__file__']).read().splitlines() if cfg.get('__file__') else []
    rule = [i for i, line in enumerate(lines) if line.startswith('# ----')]
    if len(rule) >= 2:
        print('settings (--key=value, or a config file of key = value lines):')
        print('\n'.join(lines[rule[0] + 1:rule[1]]))
    raise SystemExit(0)


def check(ok, msg):
    """A script's check functions (check_config, check_settings, ...): one ValueError, its message the fix."""
    if not ok:
        raise ValueError(msg)


def check_device(device, dtype):
    """One line, and the fix, for a device or dtype this machine cannot run (train.py, sample.py, bench.py)."""
    import torch
    if not re.fullmatch(r'cpu|mps|cuda(:\d+)?', device):
        fail(f"--device={device!r}: use cpu, cuda, cuda:N or mps")
    if device.startswith('cuda') and not torch.cuda.is_available():
        fail(f"--device={device} but this PyTorch sees no CUDA GPU: use --device=cpu, or install "
             f"a CUDA build of torch")
    if device.startswith('cuda:') and int(device[5:]) >= torch.cuda.device_count():
        fail(f"--device={device} but there are {torch.cuda.device_count()} GPUs")
    if device == 'mps' and not torch.backends.mps.is_available():
        fail("--device=mps but MPS is not available here: use --device=cpu")
    if dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"--dtype={dtype!r}: use float32, bfloat16 or float16")
    if dtype == 'float16' and not device.startswith('cuda'):
        fail(f"--dtype=float16 needs CUDA (its gradient scaler): use bfloat16 or float32 on {device}")


def fail(msg):
    """Stop with one line, `error: msg`, exit 1; and where a parent script asked for it (child()), the same line as
    JSON in the file it named, so the parent reports it without reading our output."""
    if os.environ.get('DID_ERROR_FILE'):
        path = os.environ['DID_ERROR_FILE']
        tmp = f'{path}.{os.getpid()}'  # written whole, then moved in: several ranks of a torchrun may fail at once
        with open(tmp, 'w') as f:
            json.dump({'error': str(msg)}, f)
        os.replace(tmp, path)
    sys.exit(f"error: {msg}")


def print_line(line):
    """child()'s echo for a caller that shows its child's output as it comes."""
    print(line, end='', flush=True)


def child(cmd, log=None, echo=None, name=None, **kw):
    """Run one of our scripts (cmd: argv; name: what to call it in an error), all of its output into the file log (if
    given) and each line to echo (if given). A failure stops the caller with the child's own error line (fail()'s
    JSON), or, when the child died some other way (a traceback, a signal), with its exit status and its log."""
    name = name or next((os.path.basename(c) for c in cmd[1:] if c.endswith('.py')), cmd[0])
    with tempfile.TemporaryDirectory() as tmp:
        err = os.path.join(tmp, 'error.json')
        env = dict(os.environ, PYTHONUNBUFFERED='1', DID_ERROR_FILE=err)
        with open(log or os.devnull, 'w') as f:
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
            try:
                for line in p.stdout:
                    f.write(line)
                    f.flush()
                    if echo:
                        echo(line)
            except BaseException as e:
                if isinstance(e, Exception):  # our own failure (a full disk, a closed pipe): stop the child
                    p.kill()
                f.writelines(p.stdout)  # Ctrl-C reached the child too: its last lines (train.py: where it saved)
                raise
            finally:
                p.wait()
        try:
            msg = json.load(open(err))['error'] if os.path.exists(err) else None
        except (ValueError, KeyError):
            msg = None
    if p.returncode:
        fail(f"{name}: {msg}" if msg else
             f"{name} ({' '.join(cmd[1:])[:300]}) exited with status {p.returncode}" + (f"; its output: {log}" if log else ""))


def guard(fn, *args):
    """fn(*args), its ValueError (a bad file, a missing package, no network) told in one line."""
    try:
        return fn(*args)
    except ValueError as e:
        fail(e)
