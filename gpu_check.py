"""
The first minutes on a GPU: every number this repository has not measured yet, from one command, into one JSON.

$ python gpu_check.py                      # one CUDA GPU (H100 / H200), about 10 minutes: gpu_check.json
$ python gpu_check.py --smoke=True         # any machine, seconds: the same steps at a toy shape (the tests run it)

1. bench.py at the paper's shape (BD3-LM small: 12 x 768, L=1024, GPT-2 vocabulary, batch 16): training step time,
   tokens/s and MFU of block diffusion B=4 with dense SDPA and with FlexAttention, global B=L and AR; the loss under
   bf16 autocast against fp32 on one batch; sampling at L=1024: the KV-cached draft at batch 1 and 32, the exact
   refine, and sample.py's default refine.
2. bench.py --floor=True: the draft's and a global stage's forwards eager, compiled as CUDA graphs (fast.py), and
   their matmuls alone, for the token protocol's 4 × 256 shape and BD3-LM small's, at batch 1 and 32, with the compile time
   and the tokens after which compiling pays (what sample.py --compile's default should be on a GPU); several
   minutes, most of them compiling (a draft block's graph holds five forwards: on a 2-core CPU these rows compile
   in about 7 minutes; --floor=False skips it; --smoke runs the steps uncompiled).
3. torchrun --nproc_per_node=1 train.py config/train_did_owt.py on synthetic tokens (a sparse Markov chain over
   1,000 GPT-2 ids: learnable, so the loss must fall) for `steps` iterations; then the same run stopped halfway
   and resumed, whose losses after the resume must equal the uninterrupted run's.
4. train.py config/train_tinystories_gpu.py (the quick start's recipe at GPT-2 small's size, compact vocabulary) on
   the same synthetic tokens for `steps` iterations: its tokens/s and MFU, so its README line can give a time.
"""

import json
import os
import sys
import time

import numpy as np
import torch

from configurator import child, configure, fail, print_line

# -----------------------------------------------------------------------------
smoke = False                   # a toy shape on any device (seconds): checks the script, measures nothing
out = 'gpu_check.json'          # the results
work_dir = 'out-gpu-check'      # its synthetic data and training runs
steps = 200                     # training iterations of the loss and resume check
floor = True                    # step 2, the compiled sampler's rows (most of its time is compiling: several minutes)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
here = os.path.dirname(os.path.abspath(__file__))
cuda = torch.cuda.is_available()
if not cuda and not smoke:
    fail("this PyTorch sees no CUDA GPU: run on a GPU machine, or pass --smoke=True to check the script here")
if steps < 4 or steps % 2:
    fail(f"--steps={steps} must be an even number >= 4 (the resume check stops halfway)")
try:
    os.makedirs(os.path.join(work_dir, 'data', 'synthetic'), exist_ok=True)
except OSError as e:
    fail(f"cannot write to --work_dir={work_dir} ({e.strerror}): pick a folder you can write to")
t_start = time.time()
results = dict(device=torch.cuda.get_device_name() if cuda else 'cpu', torch=torch.__version__, smoke=smoke)


def run(cmd, cwd=here):
    print('$ ' + ' '.join(cmd[1:]), flush=True)
    child(cmd, echo=print_line, cwd=cwd)  # its output as it comes; its error as JSON


# 1. the benchmark
bench_json = os.path.abspath(os.path.join(work_dir, 'bench.json'))
shape = ['--shape=smoke', '--vocab_size=1001', '--sample_batch=2', '--train_iters=1', '--warmup=1'] if smoke else \
        ['--shape=owt', '--batch_size=16', '--sample_batch=32']
run([sys.executable, os.path.join(here, 'bench.py'), *shape, '--schedules=False', '--skip_long=True', f'--out={bench_json}'])
results['bench'] = json.load(open(bench_json))

# 2. the compiled sampler against eager and the matmul floor (the 12 x 768 TinyStories shape behaves as BD3-LM's here)
floor_json = os.path.abspath(os.path.join(work_dir, 'floor.json'))
models = ["--floor_models=['smoke']", '--floor_blocks=1', '--sample_batch=1', '--floor_compile=False'] if smoke else \
         ["--floor_models=['tiny', 'bd3lm']", '--sample_batch=32']
if floor:
    run([sys.executable, os.path.join(here, 'bench.py'), '--floor=True', *models, f'--out={floor_json}'])
results['floor'] = json.load(open(floor_json))['floor'] if floor else []

# 3. training on synthetic tokens: the loss falls, and a resume continues exactly
rng = np.random.default_rng(0)
nxt = rng.integers(0, 1000, (1000, 4))  # each id is followed by one of 4 others: log 4 nats per token at best
n = 200_000 if smoke else 2_000_000  # tokens of the chain
ids = np.empty(n, dtype=np.uint16)
ids[0] = 0
choice = rng.integers(0, 4, len(ids))
for i in range(1, len(ids)):
    ids[i] = nxt[ids[i - 1], choice[i]]
data = os.path.join(work_dir, 'data', 'synthetic')
ids[:n * 9 // 10].tofile(os.path.join(data, 'train.bin'))
ids[n * 9 // 10:].tofile(os.path.join(data, 'val.bin'))
json.dump(dict(tokenizer='gpt2', vocab_size=50257, eot=50256), open(os.path.join(data, 'meta.json'), 'w'))
args = ['--dataset=synthetic', '--warmup_iters=20', '--eval_iters=2', '--log_interval=10', '--noise_search=False',
        '--batch_size=16', '--total_batch_size=16384', f'--eval_interval={steps // 2}', '--overwrite=True']
if smoke:
    args = ['--dataset=synthetic', '--warmup_iters=2', '--eval_iters=1', '--log_interval=1', '--noise_search=False',
            '--n_layer=1', '--n_head=2', '--n_embd=32', '--seq_len=32', '--block_mix={4: 0.9, 32: 0.1}',
            '--eval_block_sizes=[4, 32]', '--batch_size=4', '--total_batch_size=128', f'--eval_interval={steps // 2}',
            '--learning_rate=3e-3', '--overwrite=True']
train = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', os.path.join(here, 'train.py'),
         os.path.join(here, 'config', 'train_did_owt.py'), *args]


def log(folder):
    """train.py's training log lines in work_dir/folder/log.jsonl, by iteration (a resume appends to them)."""
    lines = [e for e in map(json.loads, open(os.path.join(work_dir, folder, 'log.jsonl'))) if 'loss' in e]
    return {e['iter']: e for e in lines}


t0 = time.time()
run(train + [f'--max_iters={steps}', '--out_dir=straight'], cwd=work_dir)
straight, seconds = log('straight'), time.time() - t0
run(train + [f'--max_iters={steps // 2}', '--out_dir=resumed'], cwd=work_dir)
run([*train[:6], '--out_dir=resumed', '--init_from=resume', f'--max_iters={steps}'], cwd=work_dir)
resumed = {i: e for i, e in log('resumed').items() if i > steps // 2}
first, last = straight[min(straight)]['loss'], straight[max(straight)]['loss']
diff = max(abs(e['loss'] - straight[i]['loss']) for i, e in resumed.items())
results['train'] = dict(steps=steps, seconds=seconds, first_loss=first, last_loss=last, loss_falls=last < 0.9 * first,
                        tok_per_s=straight[max(straight)]['tok_per_s'], mfu=straight[max(straight)]['mfu'],
                        resumed_iterations=sorted(resumed), resume_max_abs_diff=diff, resume_exact=diff == 0.0,
                        losses={i: e['loss'] for i, e in straight.items()})

# 4. the TinyStories GPU recipe's speed (its vocabulary: the ~10.6K ids of prepare_owt.py --compact)
ts = os.path.join(work_dir, 'data', 'synthetic_ts')
os.makedirs(ts, exist_ok=True)
ids[:n * 9 // 10].tofile(os.path.join(ts, 'train.bin'))
ids[n * 9 // 10:].tofile(os.path.join(ts, 'val.bin'))
json.dump(dict(tokenizer='gpt2', vocab_size=10558, eot=0, ids=list(range(10558))), open(os.path.join(ts, 'meta.json'), 'w'))
ts_args = ['--dataset=synthetic_ts', '--eval_iters=1', '--log_interval=10', f'--eval_interval={steps}', '--overwrite=True',
           f'--max_iters={steps}', '--out_dir=tinystories']
if smoke:
    ts_args += ['--n_layer=1', '--n_head=2', '--n_embd=32', '--seq_len=32', '--block_mix={4: 0.9, 32: 0.1}',
                '--eval_block_sizes=[4, 32]', '--batch_size=4', '--total_batch_size=128', '--log_interval=1']
t0 = time.time()
run([sys.executable, os.path.join(here, 'train.py'), os.path.join(here, 'config', 'train_tinystories_gpu.py'), *ts_args],
    cwd=work_dir)
ts_log = log('tinystories')
speed = ts_log[max(ts_log)]  # the last log line
results['tinystories_gpu'] = dict(steps=steps, seconds=time.time() - t0, tok_per_s=speed['tok_per_s'], mfu=speed['mfu'])
results['seconds'] = time.time() - t_start
json.dump(results, open(out, 'w'), indent=1)
b, tr = results['bench'], results['train']
print(f"\n{results['device']}: training B=4 {b['training']['block diffusion B=4']['tok_per_s']:,.0f} tok/s (MFU "
      f"{b['training']['block diffusion B=4']['mfu'] or 0:.1%}); bf16 vs fp32 loss {b['bf16_vs_fp32']['rel_diff']:.1e}; "
      f"train.py {tr['first_loss']:.3f} -> {tr['last_loss']:.3f} in {steps} steps, resume max |diff| {diff:.2e}; "
      f"wrote {out} ({results['seconds']:.0f} s)")
for r in results['floor']:
    print(f"{r['model']} {r['stage']} batch {r['batch']}: eager {r['eager_ms']:.2f} ms/forward, compiled {r['compiled_ms']:.2f} "
          f"({r['speedup']:.2f}x), matmuls alone {r['floor_ms']:.2f}; compile {r['compile_s']:.0f} s")
if not tr['loss_falls']:
    fail(f"the training loss did not fall ({first:.3f} -> {last:.3f}): see {out}")
