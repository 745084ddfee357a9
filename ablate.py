"""
The paper's protocol at toy scale, in one command, with the paper's proportions: on characters, or on GPT-2 tokens.

$ python ablate.py                                               # Tiny Shakespeare as characters (downloaded into data/ once)
$ python ablate.py config/ablate_tinystories.py                  # TinyStories as GPT-2 tokens, with an AR row
$ python ablate.py --text=books/ --learning_rate=1e-3 --out_dir=out-ablation-books   # any .txt file, or a folder of them
$ python ablate.py --out_dir=ablation --overwrite=True           # remake the committed tables

As in the paper, nobody trains DiD from scratch, and the budgets keep the paper's proportions:
  1. pretrain one global model (block size L: MDLM) for P = 5.7 F iterations (BD3-LM's public 850K-step pretrain;
     --pretrain_mix > 0 mixes block 4 in; on tokens the global pretrain learns in the budget with --beta2=0.95);
  2. from it, for each seed, fine-tune the baseline (BD3-LM: block 4 only) for F iterations (BD3-LM: 150K steps),
     DiD (mix-scale blocks) for 0.26 F (the paper's 26%), and a block-4-only model for 0.26 F (the paper's "small
     blocks only" arm: mix-scale's role at DiD's budget); for the first seed also DiD for F (an equal budget);
  3. train a causal AR judge on the same text, and (--ar) the AR row: a causal model trained for P + F iterations,
     the baseline's whole budget (the paper's table: AR 14.1, BD3-LM 25.7, DiD 21.9);
  4. evaluate: validation NELBO at B=4 and B=L; for the headline samplers (each model's draft, and draft + snapshot
     refine) in random and confidence order, a temperature sweep: Gen PPL under the judge against entropy, one
     curve per sampler, read off at the entropy of real validation text and at that of the baseline's draft at
     temperature 1 (Gen PPL rewards low entropy: only rows at one entropy compare fairly); at temperature 1,
     snapshot / posthoc / random remasking at each gamma; beside Gen PPL, the global coherence of the samples
     (judge.py: the mutual information between a sample's halves, and the names its second half keeps);
  5. write results.json, results.md, frontier.png and pareto.png (and schedules.png) into out_dir.
Every run folder is named by a hash of its settings and data: a rerun reuses only what was made with the same
settings (an interrupted run resumes where it stopped, rows already scored are kept), and results already in
out_dir are never replaced unless --overwrite=True. Progress, with an estimate of the time left, is printed as
it runs; each step's full output is in out_dir/<step>.log.
"""

import signal
import sys
signal.signal(signal.SIGINT, lambda *_: sys.exit("error: interrupted: run the same command again to continue where it stopped"))

import glob
import hashlib
import json
import math
import os
import re
import time
import urllib.request

import numpy as np

from configurator import check, child, configure, fail, guard
from judge import Judge, boot_se, matched_entropy, real_word_rate, words
from load import Tokenizer

# -----------------------------------------------------------------------------
text = ''                       # a text file, or a folder of .txt files; '' = Tiny Shakespeare, fetched into data/tinyshakespeare/input.txt
tokenizer = 'char'              # 'char', or 'gpt2': GPT-2 tokens in a compact vocabulary (prepare_owt.py --compact)
out_dir = 'out-ablation'        # data, runs, rows and results go here
overwrite = False               # replace results.json/.md and the plots already in out_dir
seq_len = 256                   # L
n_layer = 4                     # every model has this shape
n_head = 4
n_embd = 128
dropout = 0.1                   # residual dropout in every run (BD3-LM's 0.1): the pretrain then transfers to B=4 (val NELBO 2.21 against 2.47; ablation/README.md)
batch_size = 8                  # batch 8 at lr 3e-3 learned the most per CPU-second (ablation/README.md)
learning_rate = 3e-3            # every run; the Gutenberg books need 1e-3 (at 3e-3 the pretrain sat on a plateau near 3 nats/char)
beta2 = 0.999                   # AdamW's beta2 in the diffusion runs (BD3-LM's); the AR row and the judge keep 0.999
warmup_iters = 100              # the pretrain's; a fine-tune warms up for BD3-LM's 2500 steps scaled as its budget is, 2500 F / 150K
decay_lr = True                 # cosine to lr / 10 in every run (each fine-tune warms up again from its fresh optimizer)
ema_decay = 0.999
finetune_iters = 600            # F, the baseline's fine-tuning budget (BD3-LM: 150K steps); the whole command's ~90 minutes allow this
pretrain_iters = None           # P; None: round(5.7 F), BD3-LM's 850K pretraining steps to its 150K fine-tuning steps
budget_frac = 0.26              # DiD's share of F, and the block-4-only arm's (the paper: 26%)
block_mix = 0.9                 # DiD's probability of block 4; the rest goes to the whole sequence (paper: lambda = 0.1)
pretrain_mix = 0.0              # the pretrain's probability of block 4 (0: global only, the paper's MDLM pretrain)
judge_iters = 2000              # the AR judge
num_samples = 64                # samples per table row (the same sample seeds in every row)
eval_iters = 64                 # validation batches for each model's NELBO table
gamma = 0.25                    # the headline refine's remask ratio
gammas = [0.1, 0.25, 0.5]       # remask ratios of the snapshot / posthoc / random rows (temperature 1)
orders = ['random', 'confidence']  # the draft orders swept (random: BD3-LM's sampler, the paper's)
temperatures = {'random': [0.8, 1.0, 1.2, 1.4, 1.6, 1.8], 'confidence': [1.0, 1.5, 2.0, 2.5, 3.0]}  # each order's sweep: it must
                                # bracket real text's entropy, which confidence order reaches only when hot (ablation/README.md)
ar = False                      # also the AR row: a causal model of the same shape trained for P + F iterations (first seed)
seeds = [1337, 1338]            # training seeds; every seed gets the headline curves, the first also every other row
sample_seed = 1337
train_only = False              # stop once every model is trained (evaluate later by running the same command)
schedules = False               # also sample the DiD model under the faster schedules of sample.py (schedules.png)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
here = os.path.dirname(os.path.abspath(__file__))
TINY_SHAKESPEARE = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def numbers(xs, lo, hi):
    return isinstance(xs, (list, tuple)) and len(xs) > 0 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                 and lo < x <= hi for x in xs)


def check_settings():
    """Every setting, before anything is trained: one ValueError per mistake."""
    for k in ('seq_len', 'n_layer', 'n_head', 'n_embd', 'batch_size', 'finetune_iters', 'judge_iters', 'eval_iters'):
        check(isinstance(globals()[k], int) and globals()[k] > 0, f"--{k}={globals()[k]} must be a positive integer")
    check(pretrain_iters is None or isinstance(pretrain_iters, int) and pretrain_iters > 0,
          f"--pretrain_iters={pretrain_iters} must be a positive integer, or None for 5.7 x finetune_iters")
    check(isinstance(budget_frac, (int, float)) and 0 < budget_frac <= 1 and round(budget_frac * finetune_iters) >= 1,
          f"--budget_frac={budget_frac} must be in (0, 1] and leave at least one iteration of finetune_iters={finetune_iters}")
    check(isinstance(pretrain_mix, (int, float)) and 0 <= pretrain_mix < 1, f"--pretrain_mix={pretrain_mix} must lie in [0, 1) (0: the paper's global pretrain)")
    check(isinstance(block_mix, (int, float)) and 0 < block_mix < 1,
          f"--block_mix={block_mix} is DiD's probability of block 4 and must lie strictly between 0 and 1 (the paper: 0.9)")
    check(seq_len % 4 == 0 and seq_len > 4, f"--seq_len={seq_len} must be a multiple of 4 (the drafting block) above 4")
    check(n_embd % n_head == 0 and (n_embd // n_head) % 2 == 0, f"--n_embd={n_embd} must split into --n_head={n_head} heads of an even size")
    check(isinstance(learning_rate, (int, float)) and learning_rate > 0, f"--learning_rate={learning_rate} must be positive")
    check(isinstance(beta2, float) and 0 < beta2 < 1, f"--beta2={beta2} must lie strictly between 0 and 1")
    check(isinstance(warmup_iters, int) and warmup_iters >= 0, f"--warmup_iters={warmup_iters} must be an integer >= 0")
    check(0 <= ema_decay < 1 and 0 <= dropout < 1, f"--ema_decay={ema_decay} and --dropout={dropout} must lie in [0, 1)")
    check(isinstance(num_samples, int) and num_samples >= 4, f"--num_samples={num_samples} must be an integer >= 4 (standard errors, "
          f"and the spliced windows pair each half with a window two or more away)")
    check(numbers([gamma], 0, 1), f"--gamma={gamma} must be a remask ratio in (0, 1]")
    check(numbers(gammas, 0, 1), f"--gammas={gammas} must be a list of remask ratios in (0, 1], e.g. [0.1, 0.25, 0.5]")
    check(tokenizer in ('char', 'gpt2'), f"--tokenizer={tokenizer!r}: use char or gpt2")
    check(isinstance(orders, (list, tuple)) and orders and set(orders) <= {'random', 'confidence'} and 'random' in orders,
          f"--orders={orders} must list draft orders, random (the paper's) and optionally confidence")
    check(isinstance(temperatures, dict) and set(orders) <= set(temperatures) and
          all(numbers(temperatures[o], 0, 10) and 1.0 in temperatures[o] and list(temperatures[o]) == sorted(set(temperatures[o])) for o in orders),
          f"--temperatures={temperatures} must give each order of {orders} increasing temperatures > 0 that "
          f"include 1 (the paper's), e.g. {{'random': [1.0, 1.2], 'confidence': [1.0, 2.0]}}")
    check(isinstance(seeds, (list, tuple)) and seeds and all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds),
          f"--seeds={seeds} must be a list of distinct integers, e.g. [1337, 1338]")
    check(isinstance(sample_seed, int), f"--sample_seed={sample_seed} must be an integer")
    check(not os.path.isfile(out_dir), f"--out_dir={out_dir} is a file: pick a folder name")
    check(overwrite or not any(map(os.path.exists, results)),
          f"{out_dir} already holds results: pick a new --out_dir, or pass --overwrite=True to remake them")


results = [os.path.join(out_dir, f) for f in ('results.json', 'results.md', 'frontier.png', 'pareto.png', 'schedules.png')]
guard(check_settings)
P = round(5.7 * finetune_iters) if pretrain_iters is None else pretrain_iters
small_iters = round(budget_frac * finetune_iters)
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    print("matplotlib is not installed: tables only, no plots (pip install matplotlib)")

# the text: a file, a folder of .txt files, or Tiny Shakespeare, fetched once as nanoGPT's shakespeare_char does
if not text:
    text = os.path.join('data', 'tinyshakespeare', 'input.txt')
    if not os.path.exists(text):
        print(f"downloading Tiny Shakespeare to {text}")
        try:
            with urllib.request.urlopen(TINY_SHAKESPEARE, timeout=30) as r:
                data = r.read()
            os.makedirs(os.path.dirname(text), exist_ok=True)
            open(text + '.tmp', 'wb').write(data)
            os.replace(text + '.tmp', text)
        except OSError as e:
            fail(f"could not download Tiny Shakespeare ({type(e).__name__}; offline?): save {TINY_SHAKESPEARE} as "
                 f"{text}, or pass --text=FILE_OR_FOLDER")
files = sorted(glob.glob(os.path.join(text, '*.txt'))) if os.path.isdir(text) else [text]
guard(check, files and all(os.path.isfile(f) for f in files), f"--text={text} is not a text file or a folder of .txt files")
try:
    os.makedirs(out_dir, exist_ok=True)
    open(os.path.join(out_dir, '.write_test'), 'w').close()
    os.remove(os.path.join(out_dir, '.write_test'))
except OSError as e:
    fail(f"cannot write to --out_dir={out_dir} ({e.strerror}): pick a folder you can write to")


def write_json(obj, path):
    """Whole or not at all: a Ctrl-C never leaves a half-written file that a rerun would take for a finished one."""
    json.dump(obj, open(path + '.tmp', 'w'))
    os.replace(path + '.tmp', path)


def finished_at(folder, iters):
    """If folder's run saved its last iteration, the seconds its log gives for it (train.py logs each evaluation
    to log.jsonl once its checkpoint is saved); None otherwise."""
    path = os.path.join(out_dir, folder, 'log.jsonl')
    done = [e['seconds'] for e in map(json.loads, open(path)) if e.get('iter') == iters and 'seconds' in e] if os.path.exists(path) else []
    return done[-1] if done else None


def key(*parts):
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


SHOW = re.compile(r'(iter \d+:|step \d+:|noise search|stage B=|\d+ samples in|error)')  # the lines worth echoing


def run(script, *args, log=None):
    """Run one of our scripts in out_dir, its progress echoed as it comes and all of its output in out_dir/log.
    A failure (or Ctrl-C) stops everything with the child's error; a rerun continues where it stopped."""
    def echo(line):
        if SHOW.match(line):
            print('    ' + line.rstrip()[:160], flush=True)
    try:
        child([sys.executable, os.path.join(here, script), *map(str, args)], log and os.path.join(out_dir, log), echo, cwd=out_dir)
    except KeyboardInterrupt:
        fail(f"interrupted during {script}: run the same command again to continue where it stopped")


# progress: each step's cost estimated in seconds on a 2-core CPU at the default shape, rescaled as steps finish
size = n_layer * n_embd ** 2 / (4 * 128 ** 2) * seq_len / 256
done = {'est': 0.0, 'secs': 0.0}
t_start = time.time()


def step(label, est, k, n):
    spent = time.time() - t_start
    rate = done['secs'] / done['est'] if done['est'] else 1.0
    print(f"[{k}/{n}] {label} (elapsed {spent / 60:.0f} min, about {rate * remaining[0] / 60:.0f} min left)", flush=True)


def finished(est, t0):
    done['est'] += est
    done['secs'] += time.time() - t0
    remaining[0] -= est


signal.signal(signal.SIGINT, signal.default_int_handler)  # from here a Ctrl-C lets the running step save, then stops


# 1. the data, as characters or compact GPT-2 tokens, in a folder named by its content
data_key = key([hashlib.sha1(open(f, 'rb').read()).hexdigest() for f in files], tokenizer)
dataset = f'text-{data_key}'
if not os.path.exists(os.path.join(out_dir, 'data', dataset, 'meta.json')):
    run('prepare_owt.py', '--input', *map(os.path.abspath, files), f'--tokenizer={tokenizer}',
        *(['--compact'] if tokenizer == 'gpt2' else []), f'--out_dir=data/{dataset}')
meta = json.load(open(os.path.join(out_dir, 'data', dataset, 'meta.json')))
try:
    tok = Tokenizer(meta)
except ValueError as e:
    fail(e)
train_ids = np.fromfile(os.path.join(out_dir, 'data', dataset, 'train.bin'), dtype=np.uint16)
val = np.fromfile(os.path.join(out_dir, 'data', dataset, 'val.bin'), dtype=np.uint16)
guard(check, min(len(train_ids), len(val)) > seq_len, f"--text has too little text for --seq_len={seq_len}: use more text or a smaller seq_len")
train_text = tok.decode(train_ids.tolist())
vocab = set(words(train_text))  # the real words: those of the training split
words_path = os.path.join(out_dir, 'data', dataset, 'train_words.txt')
if not os.path.exists(words_path):
    open(words_path, 'w').write('\n'.join(sorted(vocab)))

# 2.-3. the models: each in a folder named by its settings (and its parent's); finished ones are reused
common = dict(dataset=dataset, tokenizer=tokenizer, seq_len=seq_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
              dropout=dropout, batch_size=batch_size, total_batch_size=batch_size * seq_len, learning_rate=learning_rate,
              warmup_iters=warmup_iters, decay_lr=decay_lr, ema_decay=ema_decay, eval_iters=16, log_interval=100, device='cpu',
              compile=False, eval_block_sizes=[4, seq_len], noise_clip={4: (0.5, 1.0)})
mix = {4: block_mix, seq_len: round(1 - block_mix, 6)}
arms = []  # (role, seed, iterations, folder, its train.py settings, the folder it starts from)


def arm(role, seed, iters, init=None, **kw):
    args = {**common, 'seed': seed, 'max_iters': iters, 'eval_interval': iters, **kw}
    folder = f"{role}-{key(data_key, args, init)}"
    arms.append((role, seed, iters, folder, args, init))
    return folder


ft_warmup = max(1, round(2500 / 150_000 * finetune_iters))
models = {}
pre = arm('pretrain', seeds[0], P, beta2=beta2,  # one pretrain, as the paper starts from one public model
          block_mix={seq_len: 1.0} if not pretrain_mix else {4: pretrain_mix, seq_len: round(1 - pretrain_mix, 6)})
for i, seed in enumerate(seeds):
    ft = dict(warmup_iters=ft_warmup, beta2=beta2)
    models[seed] = dict(pretrain=pre, baseline=arm('baseline', seed, finetune_iters, pre, block_mix={4: 1.0}, **ft),
                        did=arm('did', seed, small_iters, pre, block_mix=mix, **ft),
                        small=arm('small', seed, small_iters, pre, block_mix={4: 1.0}, **ft))
    if i == 0:
        models[seed]['did_equal'] = arm('did_equal', seed, finetune_iters, pre, block_mix=mix, **ft)
if ar:  # the AR row: the baseline's whole budget (P + F), one seed; its samples join every seed's comparison
    ar_folder = arm('ar', seeds[0], P + finetune_iters, causal=True, block_mix={4: 1.0})
    for seed in seeds:
        models[seed]['ar'] = ar_folder
judge = arm('judge', seeds[0], judge_iters, causal=True, block_mix={4: 1.0})
judge_ckpt = os.path.join(judge, 'ckpt.pt')


def train_est(args):
    cost = sum(p * (1.0 if b == seq_len else 2.05) for b, p in args['block_mix'].items()) if not args.get('causal') else 0.96
    return 5 + args['max_iters'] * 0.23 * cost * size * batch_size / 8  # 5 s: a fresh Python importing torch


# 4. the rows: (seed, model, label, stages, remask, order, temperature), each one sample.py --eval call
G = f'L:{gamma}'
headline = {'draft': '4:1.0', 'draft + refine': f'4:1.0,{G}'}  # stages of each headline sampler
curves = [(seed, role, name, order) for seed in seeds for order in orders
          for role in ('baseline', 'did', 'small') for name in headline if (role, name) != ('baseline', 'draft + refine')]
curves += [(seed, 'ar', 'sample', 'random') for seed in seeds if ar]  # AR samples left to right: no order, no stages
plan = [(s, role, f'{name}, {order} order, T={T:g}', headline.get(name, '4:1.0'), 'snapshot', order, T)
        for s, role, name, order in curves for T in temperatures[order]]
s0 = seeds[0]
plan += [(s0, 'baseline', 'draft + refine, random order, T=1', headline['draft + refine'], 'snapshot', 'random', 1.0)]
plan += [(s0, 'did', f'{remask} refine γ={g}, random order, T=1', f'4:1.0,L:{g}', remask, 'random', 1.0)
         for remask in ('snapshot', 'posthoc', 'random') for g in gammas]
plan += [(s0, 'did_equal', f'{name}, random order, T=1', st, 'snapshot', 'random', 1.0) for name, st in headline.items()]
if schedules:  # the faster schedules of sample.py on the DiD model (one token per forward is the exact sampler)
    never = 0  # refresh=0: the fixed tokens' keys/values from the refine's first forward only
    for lbl, st in {'draft 2/forward': '4:1.0:steps=2', 'draft threshold 0.9': '4:1.0:threshold=0.9',
                    'refine 4 forwards': f'4:1.0,{G}:steps=4:refresh={never}',
                    'refine 4 forwards, r=1': f'4:1.0,{G}:steps=4', 'refine r=4': f'4:1.0,{G}:refresh=4',
                    'refine r=inf': f'4:1.0,{G}:refresh={never}',
                    'refine threshold 0.9, r=inf': f'4:1.0,{G}:threshold=0.9:refresh={never}'}.items():
        plan.append((s0, 'did', f'schedule: {lbl}, confidence order, T=1', st, 'snapshot', 'confidence', 1.0))
plan = list(dict.fromkeys(plan))  # a row asked for twice is sampled once


def row_est(stages):
    g = sum(float(s.split(':')[1]) for s in stages.split(',')[1:])
    return 5 + (5 + 165 * g * seq_len / 256) * num_samples / 64 * size


remaining = [sum(train_est(a[4]) for a in arms) + (0 if train_only else sum(row_est(r[3]) for r in plan) + 60)]
n_steps = len(arms) + (0 if train_only else len(plan) + 1)
print(f"protocol: pretrain P={P}, fine-tunes F={finetune_iters} (baseline, DiD equal budget) and {small_iters} (DiD, "
      f"block-4 only), {ft_warmup} warmup; seeds {seeds}; {len(plan)} sampled rows of {num_samples}; {n_steps} steps", flush=True)
times = {}
for k, (role, seed, iters, folder, args, init) in enumerate(arms, 1):
    ckpt, timing, est = os.path.join(out_dir, folder, 'ckpt.pt'), os.path.join(out_dir, folder, 'seconds.json'), train_est(args)
    if os.path.exists(timing):
        print(f"reusing {folder}", flush=True)
        remaining[0] -= est
    else:
        step(f"training {folder} ({iters} iterations{f', from {init}' if init else ''})", est, k, n_steps)
        how = ['--init_from=resume'] if os.path.exists(ckpt) else ([f'--init_from=run:{init}'] if init else [])
        t0, secs = time.time(), finished_at(folder, iters)
        if secs is None:  # (a run stopped after its last checkpoint, before seconds.json, has nothing left to train)
            run('train.py', *[f'--{a}={v}' for a, v in args.items()], f'--out_dir={folder}', *how, log=f'{folder}.log')
        write_json(time.time() - t0 if secs is None else secs, timing)  # written last: the folder holds a finished run
        finished(est, t0)
    times[folder] = json.load(open(timing))
write_json(times, os.path.join(out_dir, 'trained.json'))  # every run of the protocol, by folder: its training seconds
if train_only:
    print(f"trained: {out_dir}/trained.json")
    sys.exit(0)



def evaluate(folder, *args):
    """The validation NELBOs of folder's checkpoint: train.py --eval_only writes them to folder/log.jsonl."""
    run('train.py', f'--out_dir={folder}', '--init_from=resume', '--eval_only=True', f'--eval_iters={eval_iters}', *args)
    last = json.loads(open(os.path.join(out_dir, folder, 'log.jsonl')).readlines()[-1])
    return {k: v for k, v in last.items() if k.startswith('val/')}


nelbos = {folder: evaluate(folder, f'--eval_block_sizes=[4, {seq_len}]')
          for folder in dict.fromkeys(f for ms in models.values() for f in ms.values())}
judge_nelbo = evaluate(judge)['val/nelbo_B0']
os.makedirs(os.path.join(out_dir, 'rows'), exist_ok=True)
rows, row_seconds = [], {}  # row_seconds: by row file, so a row that serves two seeds (the AR row) counts once
for k, (seed, role, label, stages, remask, order, T) in enumerate(plan, len(arms) + 1):
    folder = models[seed][role]
    args = [f'--out_dir={folder}', f'--num_samples={num_samples}', f'--batch_size={num_samples}', f'--stages={stages}',
            f'--remask={remask}', f'--order={order}', f'--temperature={T}', '--eval', f'--judge={judge_ckpt}',
            f'--seed={sample_seed}', f'--words_from={os.path.relpath(words_path, out_dir)}']
    cache, est = os.path.join(out_dir, 'rows', f'{key(folder, judge, args)}.json'), row_est(stages)
    if not os.path.exists(cache) or 'mis' not in json.load(open(cache)):  # rows scored before the coherence measures: again
        step(f"sampling seed {seed} {role} {label}", est, k, n_steps)
        t0 = time.time()
        if os.path.exists(cache):
            os.remove(cache)  # a row scored before the coherence measures
        run('sample.py', *args, f'--eval_out={os.path.relpath(cache, out_dir)}', log='sample.log')  # written whole, or not at all
        finished(est, t0)
    else:
        remaining[0] -= est
    r = json.load(open(cache))
    r.update(seed=seed, model=role, label=label, folder=folder, order=order, temperature=T, remask=remask)
    rows.append(r)
    row_seconds[cache] = r.get('seconds', 0.0)
    print(f"  seed {seed} {role:9} {label:44} Gen PPL {r['gen_ppl']:7.2f} ± {r['gen_ppl_sem']:.2f}, entropy "
          f"{r['entropy']:.3f}, real words {r['real_word_rate']:.3f}", flush=True)

# the reference: real validation text, scored the same way: windows that start where a document does, as samples
# do (at random places where the text has too few documents), and the same windows spliced, each first half with
# another window's second half: the coherence measures' floor
rng = np.random.default_rng(0)
docs = np.flatnonzero(val[:len(val) - seq_len] == meta['eot'])
starts = rng.choice(docs, num_samples, replace=False) if len(docs) >= num_samples else rng.integers(0, len(val) - seq_len, num_samples)
wins = [[meta['eot']] + val[s + (val[s] == meta['eot']):][:seq_len - 1].tolist() for s in starts]
half = seq_len // 2
texts = [tok.decode(w) for w in wins]
spliced = [tok.decode(w[:half] + wins[(i + num_samples // 2) % num_samples][half:]) for i, w in enumerate(wins)]
try:
    jd = Judge(os.path.join(out_dir, judge_ckpt))
except ValueError as e:
    fail(e)
(mean, std, _, per), ents = jd.score(texts, seq_len)
sem = lambda v: float(np.nanstd(v, ddof=1) / math.sqrt(np.sum(~np.isnan(v))))  # noqa: E731
real, floor = {}, {}
for ref, ts in ((real, texts), (floor, spliced)):
    mis, shares = (np.array(v, float) for v in jd.coherence(ts, seq_len))
    ref.update(mi=float(np.nanmean(mis)), mi_sem=sem(mis), name_share=float(np.nanmean(shares)), name_share_sem=sem(shares))
real.update(gen_ppl=mean, gen_ppl_sem=std / math.sqrt(len(per)), entropy=float(np.mean(ents)),
            entropy_sem=float(np.std(ents, ddof=1) / math.sqrt(len(ents))),
            real_word_rate=float(np.mean([real_word_rate(t, vocab) for t in texts])))
H = real['entropy']


# 5. the comparison at real text's entropy, and paired differences (same sample seeds) at temperature 1
def find(seed, role, label):
    return next(r for r in rows if (r['seed'], r['model'], r['label']) == (seed, role, label))


NAMES = {'baseline': 'baseline', 'did': 'DiD', 'small': 'block-4 only', 'ar': 'AR'}


def curve_name(role, name, order):
    return f"{NAMES[role]} {name}, {order} order"


matched, diffs = {}, []
questions = [('DiD + refine − baseline draft', ('did', 'draft + refine'), ('baseline', 'draft')),
             *([('DiD + refine − AR', ('did', 'draft + refine'), ('ar', 'sample')),
                ('baseline draft − AR', ('baseline', 'draft'), ('ar', 'sample'))] if ar else []),
             ('DiD: refine − draft', ('did', 'draft + refine'), ('did', 'draft')),
             ('block-4 only: refine − draft', ('small', 'draft + refine'), ('small', 'draft')),
             ('DiD draft − block-4-only draft', ('did', 'draft'), ('small', 'draft')),
             ('DiD + refine − block-4 only + refine', ('did', 'draft + refine'), ('small', 'draft + refine'))]
for seed in seeds:
    # two entropies to compare at: real validation text's, and the paper's baseline sampler's (its draft, random
    # order, temperature 1), which every sweep reaches
    ref = find(seed, 'baseline', 'draft, random order, T=1')  # a row: the bootstrap resamples its entropy with the rest
    targets = {'real text': H, 'baseline draft T=1': ref}
    for order in orders:
        cs = {(role, name): [find(seed, role, f'{name}, {order} order, T={T:g}') for T in temperatures[order]]
              for s, role, name, o in curves if (s, o) == (seed, order)}
        for at, target in targets.items():
            est, draws = matched_entropy(cs, target)
            coh = {k: matched_entropy(cs, target, key=k, log=False) for k in ('mis', 'name_shares')}
            h = target['entropy'] if isinstance(target, dict) else target
            for (role, name), e in est.items():
                matched[f"{seed} {curve_name(role, name, order)} at {at}"] = dict(
                    seed=seed, model=role, sampler=name, order=order, at=at, entropy=h, gen_ppl=e, sem=boot_se(draws[role, name]),
                    **{f'{k}': coh[k][0][role, name] for k in coh}, **{f'{k}_sem': boot_se(coh[k][1][role, name]) for k in coh})
            if ar and ('ar', 'sample') in cs:  # the share of the baseline's gap to AR that DiD closes, at this entropy
                b, d, a = (('baseline', 'draft'), ('did', 'draft + refine'), ('ar', 'sample'))
                share = lambda x: np.where(x[b] - x[a] > 0, (x[b] - x[d]) / (x[b] - x[a]), np.nan)  # noqa: E731; no gap: NaN
                diffs.append(dict(seed=seed, order=order, question='share of the baseline → AR gap closed by DiD + refine (a ratio)',
                                  at=f'entropy of {at} ({h:.3f})', diff=float(share(est)), sem=boot_se(share(draws))))
            for q, a, b in [q for q in questions if q[1] in cs and q[2] in cs]:
                diffs.append(dict(seed=seed, order=order, question=q, at=f'entropy of {at} ({h:.3f})', diff=est[a] - est[b],
                                  sem=boot_se(draws[a] - draws[b])))
                (mi, mi_draws) = coh['mis']  # the same question for global coherence (higher is better)
                diffs.append(dict(seed=seed, order=order, question=q + ' (halves MI)', at=f'entropy of {at} ({h:.3f})',
                                  diff=mi[a] - mi[b], sem=boot_se(mi_draws[a] - mi_draws[b])))
            gain = lambda m: (draws[m, 'draft + refine'] - draws[m, 'draft'], est[m, 'draft + refine'] - est[m, 'draft'])  # noqa: E731
            diffs.append(dict(seed=seed, order=order, question="refine's gain, DiD − block-4 only", at=f'entropy of {at} ({h:.3f})',
                              diff=gain('did')[1] - gain('small')[1], sem=boot_se(gain('did')[0] - gain('small')[0])))


def paired(a, b, question):
    d = np.array(a['gen_ppls']) - np.array(b['gen_ppls'])
    d = d[~np.isnan(d)]
    diffs.append(dict(seed=a['seed'], order=a['order'], question=question, at='T=1', diff=float(d.mean()),
                      sem=float(d.std(ddof=1) / math.sqrt(len(d)))))


for g in gammas:
    snap = find(s0, 'did', f'snapshot refine γ={g}, random order, T=1')
    paired(snap, find(s0, 'did', f'posthoc refine γ={g}, random order, T=1'), f'snapshot − posthoc, γ={g}')
    paired(snap, find(s0, 'did', f'random refine γ={g}, random order, T=1'), f'snapshot − random, γ={g}')
    paired(snap, find(s0, 'did', 'draft, random order, T=1'), f'DiD: snapshot refine − draft, γ={g}')
paired(find(s0, 'baseline', 'draft + refine, random order, T=1'), find(s0, 'baseline', 'draft, random order, T=1'),
       'baseline: refine − draft')
paired(find(s0, 'did_equal', 'draft + refine, random order, T=1'), find(s0, 'did_equal', 'draft, random order, T=1'),
       'DiD equal budget: refine − draft')

settings = {k: globals()[k] for k in ('tokenizer', 'orders', 'ar', 'pretrain_mix', 'seq_len', 'n_layer', 'n_head', 'n_embd', 'dropout',
                                       'batch_size', 'learning_rate', 'beta2', 'warmup_iters', 'decay_lr', 'ema_decay', 'finetune_iters', 'budget_frac', 'block_mix',
                                       'judge_iters', 'num_samples', 'eval_iters', 'gamma', 'gammas', 'temperatures', 'seeds', 'sample_seed')}
settings.update(text=[os.path.relpath(f, here) for f in files], pretrain_iters=P,
                arms={role: it for role, _, it, *_ in arms})
json.dump(dict(settings=settings, models=models, nelbo=nelbos, judge_nelbo=judge_nelbo, train_seconds=times,
               seconds=time.time() - t_start, real_text=real, spliced_text=floor, matched_entropy=matched, differences=diffs, rows=rows),
          open(results[0], 'w'), indent=1)
with open(results[1], 'w') as f:
    unit = 'char' if tokenizer == 'char' else 'token'
    made = (sum(times.values()) + sum(row_seconds.values())) / 60  # reused steps count too, shared ones once
    f.write(f"Settings: {json.dumps(settings)}\n\nAR judge: val NELBO {judge_nelbo:.4f} nats/{unit}. "
            f"This run of the command: {(time.time() - t_start) / 60:.0f} minutes; training every model and sampling "
            f"every row here took {made:.0f} minutes, whichever run made them (evaluations not counted).\n\n")
    f.write("| seed | model | iterations | val NELBO B=4 | val NELBO B=L | val NLL (AR) |\n|---|---|---|---|---|---|\n")
    for role, seed, it, folder, *_ in arms:
        if folder in nelbos:
            n = {k: f"{v:.4f}" for k, v in nelbos[folder].items()}
            f.write(f"| {seed} | {role} | {it} | {n.get('val/nelbo_B4', '-')} | {n.get(f'val/nelbo_B{seq_len}', '-')} | "
                    f"{n.get('val/nelbo_B0', '-')} |\n")
    f.write(f"\nGen PPL at a matched entropy, interpolated along each sampler's temperature sweep (± bootstrap standard "
            f"error over the {num_samples} samples; nan: the sweep does not reach it). Real text: entropy {H:.3f} ± "
            f"{real['entropy_sem']:.3f} nats, Gen PPL {real['gen_ppl']:.2f} ± {real['gen_ppl_sem']:.2f}.\n\n")
    f.write("| sampler | at the entropy of | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|---|" + "---|" * len(seeds) + "\n")
    table = [(at, order, role, name) for at in ('real text', 'baseline draft T=1') for order in orders
             for role, name in dict.fromkeys((r, n) for _, r, n, o in curves if o == order)]
    for at, order, role, name in table:
        vals = [matched[f"{s} {curve_name(role, name, order)} at {at}"] for s in seeds]
        f.write(f"| {curve_name(role, name, order)} | {at} | " + " | ".join(f"{v['gen_ppl']:.2f} ± {v['sem']:.2f}" for v in vals) + " |\n")
    f.write(f"\nGlobal coherence at the same matched entropies (judge.py): the judge's mutual information between a "
            f"sample's halves in nats/token, and the share of the second half's names that the first half introduced "
            f"(higher is more coherent). Real text: MI {real['mi']:.3f} ± {real['mi_sem']:.3f}, names "
            f"{real['name_share']:.3f} ± {real['name_share_sem']:.3f}; the same windows spliced (first half of one, second "
            f"half of another): MI {floor['mi']:.3f} ± {floor['mi_sem']:.3f}, names {floor['name_share']:.3f} ± "
            f"{floor['name_share_sem']:.3f}.\n\n| sampler | at the entropy of | " +
            " | ".join(f"seed {s}: MI | names" for s in seeds) + " |\n|---|---|" + "---|---|" * len(seeds) + "\n")
    for at, order, role, name in table:
        vals = [matched[f"{s} {curve_name(role, name, order)} at {at}"] for s in seeds]
        f.write(f"| {curve_name(role, name, order)} | {at} | " + " | ".join(
            f"{v['mis']:.3f} ± {v['mis_sem']:.3f} | {v['name_shares']:.3f} ± {v['name_shares_sem']:.3f}" for v in vals) + " |\n")
    f.write("\nDifferences in Gen PPL (negative: the first is better; halves MI: positive), paired over the same sample seeds:\n\n"
            "| seed | order | difference | at | value ± s.e. |\n|---|---|---|---|---|\n")
    for d in diffs:
        f.write(f"| {d['seed']} | {d['order']} | {d['question']} | {d['at']} | {d['diff']:+.2f} ± {d['sem']:.2f} |\n")
    f.write("\nEvery row (64 samples unless the settings say otherwise):\n\n| seed | model | sampling | Gen PPL (mean ± s.e.) | "
            "entropy | real-word rate | halves MI | names kept | forwards / sample | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n")
    f.write(f"| - | real text | validation windows | {real['gen_ppl']:.2f} ± {real['gen_ppl_sem']:.2f} | {H:.3f} | "
            f"{real['real_word_rate']:.3f} | {real['mi']:.3f} | {real['name_share']:.3f} | - | - |\n")
    for r in rows:
        f.write(f"| {r['seed']} | {r['model']} | {r['label']} | {r['gen_ppl']:.2f} ± {r['gen_ppl_sem']:.2f} | {r['entropy']:.3f} | "
                f"{r['real_word_rate']:.3f} | {r['mi']:.3f} | {r['name_share']:.3f} | {r['forwards']:.0f} | {r['seconds']:.1f} |\n")
print(open(results[1]).read())

if plt is not None:
    colors = {('baseline', 'draft'): 'C3', ('did', 'draft'): 'C0', ('did', 'draft + refine'): 'C0',
              ('small', 'draft'): 'C2', ('small', 'draft + refine'): 'C2', ('ar', 'sample'): 'C4'}
    fig, axes = plt.subplots(len(seeds), len(orders), figsize=(max(7, 5.5 * len(orders)), 4.2 * len(seeds) + 0.4), squeeze=False, sharey=True)
    for i, seed in enumerate(seeds):
        for j, order in enumerate(orders):
            ax = axes[i][j]
            for s, role, name, o in curves:
                if (s, o) != (seed, order):
                    continue
                pts = [find(seed, role, f'{name}, {order} order, T={T:g}') for T in temperatures[order]]
                ax.errorbar([p['entropy'] for p in pts], [p['gen_ppl'] for p in pts], yerr=[p['gen_ppl_sem'] for p in pts],
                            color=colors[role, name], ls='-' if name != 'draft' else '--', marker='o', ms=3, capsize=2,
                            label=curve_name(role, name, order).replace(f', {order} order', ''))
            ax.errorbar([H], [real['gen_ppl']], yerr=[real['gen_ppl_sem']], color='k', marker='*', ms=10, label='real text')
            ax.axvline(H, color='gray', ls=':', lw=1)
            ax.set_yscale('log')
            ax.set_title(f'seed {seed}, {order} order (temperatures {temperatures[order][0]}–{temperatures[order][-1]})', fontsize=9)
            ax.set_xlabel(f'entropy of a sample (nats/{unit}; higher is more varied)')
            if j == 0:
                ax.set_ylabel('Gen PPL under the AR judge (lower is better)')
            ax.legend(fontsize=7)
    fig.suptitle(f'Gen PPL against entropy: DiD at toy scale ({n_layer}x{n_embd}, L={seq_len}, {unit}s, '
                 f'{os.path.basename(os.path.dirname(files[0]) if len(files) > 1 else files[0])})\ndotted: real text\'s entropy', fontsize=10)
    fig.tight_layout()
    fig.savefig(results[2], dpi=130)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r['temperature'] == 1.0 and r['order'] == 'random':
            ax.errorbar(r['seconds'], r['gen_ppl'], yerr=r['gen_ppl_sem'], fmt='o', ms=4,
                        color={'baseline': 'C3', 'did': 'C0', 'small': 'C2', 'did_equal': 'C1', 'ar': 'C4'}[r['model']])
            ax.annotate(f"{r['model']} {r['label'].split(', random')[0]} s{r['seed']}", (r['seconds'], r['gen_ppl']), fontsize=5)
    ax.axhline(real['gen_ppl'], color='gray', ls=':', lw=1)
    ax.set_xlabel(f'wall time for {num_samples} samples (s)')
    ax.set_ylabel('Gen PPL (lower is better)')
    ax.set_title('temperature 1, random order: quality against sampling time; dotted: real text', fontsize=9)
    fig.tight_layout()
    fig.savefig(results[3], dpi=130)
    sched = [r for r in rows if r['seed'] == s0 and (r['label'].startswith('schedule') or (r['model'], r['label']) in
             (('did', 'draft, confidence order, T=1'), ('did', 'draft + refine, confidence order, T=1')))]
    if schedules:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in sched:
            ax.errorbar(r['seconds'], r['gen_ppl'], yerr=r['gen_ppl_sem'], fmt='o', ms=4)
            ax.annotate(r['label'].replace('schedule: ', '').split(', confidence')[0], (r['seconds'], r['gen_ppl']), fontsize=6)
        ax.set_xlabel(f'wall time for {num_samples} samples (s)')
        ax.set_ylabel('Gen PPL (lower is better)')
        ax.set_title('sampling schedules of the DiD model, confidence order, T=1', fontsize=9)
        fig.tight_layout()
        fig.savefig(results[4], dpi=130)
    print(f"wrote {', '.join(results[:4 + schedules])}")
print(f"done in {(time.time() - t_start) / 60:.0f} minutes")
