"""
The paper's protocol at toy scale, in one command, on characters (on a 2-core CPU: Tiny Shakespeare 83 minutes, the Gutenberg books 76).

$ python ablate.py                                            # Tiny Shakespeare, from ../shared/data/text
$ python ablate.py --text=../shared/data/text/gutenberg --learning_rate=1e-3 --out_dir=out-ablation-gutenberg   # every .txt in a folder
$ python ablate.py --out_dir=ablation --overwrite=True        # remake the committed tables

As in the paper, nobody trains DiD from scratch:
  1. pretrain a global model (block size L: MDLM) for pretrain_iters;
  2. from it, fine-tune the baseline (BD3-LM: block 4 only) for finetune_iters, DiD (mix-scale blocks) for
     budget_frac * finetune_iters (the paper's 26%) and, for an equal-budget comparison, for finetune_iters;
  3. train a causal AR judge on the same characters;
  4. evaluate: validation NELBO at B=4 and B=L; samples (sample.py --eval) for the drafts, DiD's refine with
     snapshot / posthoc / random remasking at each gamma, the baseline + refine; every row reports Gen PPL under
     the AR judge (mean ± standard error), entropy, real-word rate, forward passes and wall time;
  5. sample the DiD model under the faster schedules of did.denoise (several tokens per forward, confidence order,
     thresholds, refines that reuse the fixed tokens' keys and values);
  6. write results.json, results.md, pareto.png and schedules.png into out_dir.
The headline rows (baseline draft, DiD draft and refine) are repeated for every seed in `seeds`.
Every run folder is named by a hash of its settings and data: a rerun reuses only what was made with the same
settings (an interrupted run resumes where it stopped), and results already in out_dir are never replaced
unless --overwrite=True.
"""

import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

from did import Judge, configure, real_word_rate, words

# -----------------------------------------------------------------------------
text = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared', 'data', 'text', 'tinyshakespeare.txt')  # a file, or a folder of .txt files
out_dir = 'out-ablation'        # data, runs, rows and results go here
overwrite = False               # replace results.json/.md/pareto.png already in out_dir
seq_len = 256                   # L
n_layer = 4                     # every model has this shape
n_head = 4
n_embd = 128
batch_size = 8                  # batch 8 at lr 3e-3 learned the most per CPU-second of what we tried (batch 16, lr 2e-3)
learning_rate = 3e-3            # every run; the Gutenberg books need 1e-3 (pretrain val NELBO at B=L: 2.34; 2e-3: 2.64; 3e-3: ~3, a plateau)
warmup_iters = 100
decay_lr = True                 # cosine to lr / 10 in every run (each fine-tune warms up again from its fresh optimizer)
ema_decay = 0.999
pretrain_iters = 2000           # global (B = L) pretraining
finetune_iters = 3000           # the baseline's fine-tuning budget (BD3-LM: 150K steps); its drafts' real words: 0.75 at 1,000, 0.83 at 3,000, 0.85 at 4,000 (~96 min)
budget_frac = 0.26              # DiD's share of it (the paper: 26%)
block_mix = 0.9                 # DiD's probability of block 4; the rest goes to the whole sequence (paper: lambda = 0.1)
judge_iters = 2000              # the AR judge
num_samples = 64                # samples per table row
gammas = [0.1, 0.25, 0.5]       # remask ratios of the refine rows
seeds = [1337, 1338]            # training seeds; the first gets every row, the others the headline rows
sample_seed = 1337
train_only = False              # stop once every model is trained (evaluate later by running the same command)
schedules = True                # also sample the DiD model under the faster schedules (schedules.png: quality against wall time)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
here = os.path.dirname(os.path.abspath(__file__))
files = sorted(glob.glob(os.path.join(text, '*.txt'))) if os.path.isdir(text) else [text]
if not files or not all(os.path.isfile(f) for f in files):
    raise SystemExit(f"error: --text={text} is not a text file or a folder of .txt files")
results = [os.path.join(out_dir, f) for f in ('results.json', 'results.md', 'pareto.png', 'schedules.png')]
if any(map(os.path.exists, results)) and not overwrite:
    raise SystemExit(f"error: {out_dir} already holds results: pick a new --out_dir, or pass --overwrite=True to remake them")
os.makedirs(out_dir, exist_ok=True)


def key(*parts):
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def run(script, *args, log=None):
    """Run one of our scripts in out_dir; its output goes to log (and a failure stops everything with its tail)."""
    cmd = [sys.executable, os.path.join(here, script), *map(str, args)]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True)
    if log:
        open(os.path.join(out_dir, log), 'w').write(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(f"error: {script} {' '.join(map(str, args))} failed: {(out.stderr or out.stdout).strip().splitlines()[-1]}")
    return out.stdout, time.time() - t0


# 1. the data, as characters, in a folder named by its content
data_key = key([hashlib.sha1(open(f, 'rb').read()).hexdigest() for f in files], 'char')
dataset = f'text-{data_key}'
if not os.path.exists(os.path.join(out_dir, 'data', dataset, 'meta.json')):
    run('prepare_owt.py', '--input', *map(os.path.abspath, files), '--tokenizer=char', f'--out_dir=data/{dataset}')
meta = json.load(open(os.path.join(out_dir, 'data', dataset, 'meta.json')))
train_text = ''.join(meta['chars'][i] if i < len(meta['chars']) else ' ' for i in
                     np.fromfile(os.path.join(out_dir, 'data', dataset, 'train.bin'), dtype=np.uint16))
vocab = set(words(train_text))  # the real words: those of the training split
words_path = os.path.join(out_dir, 'data', dataset, 'train_words.txt')
if not os.path.exists(words_path):
    open(words_path, 'w').write('\n'.join(sorted(vocab)))

# 2.-3. the models: each in a folder named by its settings; finished ones are reused, interrupted ones resumed
times = {}
common = dict(dataset=dataset, tokenizer='char', seq_len=seq_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
              batch_size=batch_size, total_batch_size=batch_size * seq_len, learning_rate=learning_rate,
              warmup_iters=warmup_iters, decay_lr=decay_lr, ema_decay=ema_decay, eval_iters=16, log_interval=100, device='cpu',
              compile=False, eval_block_sizes=[4, seq_len], noise_clip={4: (0.5, 1.0)})


def train(name, seed, iters, init=None, **kw):
    """Train (or reuse, or resume) one model; returns its folder, relative to out_dir."""
    args = dict(common, seed=seed, max_iters=iters, eval_interval=iters, **kw)
    folder = f"{name}-{key(data_key, args, init)}"
    ckpt = os.path.join(out_dir, folder, 'ckpt.pt')
    timing = os.path.join(out_dir, folder, 'seconds.json')
    if os.path.exists(timing):
        print(f"reusing {folder}", flush=True)
    else:
        print(f"training {folder} ({iters} iterations{f', from {init}' if init else ''})", flush=True)
        how = ['--init_from=resume'] if os.path.exists(ckpt) else ([f'--init_from=run:{init}'] if init else [])
        _, dt = run('train.py', *[f'--{k}={v}' for k, v in args.items()], f'--out_dir={folder}', *how, log=f'{folder}.log')
        json.dump(dt, open(timing, 'w'))  # written last: the folder holds a finished run
    times[folder] = json.load(open(timing))
    return folder


models = {}
for i, seed in enumerate(seeds):
    pre = train('pretrain', seed, pretrain_iters, block_mix={seq_len: 1.0})
    models[seed] = dict(pretrain=pre,
                        baseline=train('baseline', seed, finetune_iters, pre, block_mix={4: 1.0}),
                        did=train('did', seed, round(budget_frac * finetune_iters), pre,
                                  block_mix={4: block_mix, seq_len: round(1 - block_mix, 6)}))
    if i == 0:
        models[seed]['did_equal'] = train('did_equal', seed, finetune_iters, pre,
                                          block_mix={4: block_mix, seq_len: round(1 - block_mix, 6)})
judge = train('judge', seeds[0], judge_iters, causal=True, block_mix={4: 1.0})
judge_ckpt = os.path.join(judge, 'ckpt.pt')
if train_only:
    print(f"trained, seconds: {json.dumps(times)}")
    sys.exit(0)

# 4. evaluation
nelbos = {}
for seed, ms in models.items():
    for role, folder in ms.items():
        out, _ = run('train.py', f'--out_dir={folder}', '--init_from=resume', '--eval_only=True', '--eval_iters=64',
                     f'--eval_block_sizes=[4, {seq_len}]')
        nelbos[folder] = {k: float(v) for k, v in re.findall(r'(val/nelbo_B\d+): ([\d.]+)', out)}

rows = []
os.makedirs(os.path.join(out_dir, 'rows'), exist_ok=True)


def row(seed, role, label, stages, remask='snapshot', table=None):
    folder = models[seed][role]
    args = [f'--out_dir={folder}', f'--num_samples={num_samples}', f'--batch_size={num_samples}', f'--stages={stages}',
            f'--remask={remask}', '--order=random', '--eval', f'--judge={judge_ckpt}', f'--seed={sample_seed}',
            f'--words_from={os.path.relpath(words_path, out_dir)}']
    cache = os.path.join(out_dir, 'rows', f'{key(folder, judge, args)}.json')
    if not os.path.exists(cache):
        out, _ = run('sample.py', *args)
        json.dump(json.loads(out.strip().splitlines()[-1]), open(cache, 'w'))
    r = json.load(open(cache))
    r.update(seed=seed, model=role, label=label, folder=folder)
    (rows if table is None else table).append(r)
    print(f"  seed {seed} {role:9} {label:42} Gen PPL {r['gen_ppl']:7.2f} ± {r['gen_ppl_sem']:.2f}, entropy "
          f"{r['entropy']:.3f}, real words {r['real_word_rate']:.3f}, {r['forwards']:.0f} forwards, {r['seconds']:.1f}s",
          flush=True)


L = 'L'
for i, seed in enumerate(seeds):
    row(seed, 'baseline', 'draft (B=4)', '4:1.0')
    row(seed, 'did', 'draft (B=4)', '4:1.0')
    row(seed, 'did', 'snapshot refine, γ=0.25', f'4:1.0,{L}:0.25')
    if i:
        continue
    row(seed, 'baseline', 'snapshot refine, γ=0.25', f'4:1.0,{L}:0.25')
    for remask in ('snapshot', 'posthoc', 'random'):
        for g in gammas:
            if (remask, g) != ('snapshot', 0.25):
                row(seed, 'did', f'{remask} refine, γ={g}', f'4:1.0,{L}:{g}', remask)
    row(seed, 'did_equal', 'draft (B=4)', '4:1.0')
    row(seed, 'did_equal', 'snapshot refine, γ=0.25', f'4:1.0,{L}:0.25')
    # the same comparison with confidence-ordered reveals (one token per forward, the most probable first)
    row(seed, 'baseline', 'draft (B=4), confidence order', '4:1.0:order=confidence')
    row(seed, 'did', 'draft (B=4), confidence order', '4:1.0:order=confidence')
    row(seed, 'did', 'snapshot refine, γ=0.25, confidence order', f'4:1.0:order=confidence,{L}:0.25:order=confidence')

# the sampling schedules of did.denoise on the DiD model: several tokens per forward (in confidence order, or
# every draw above a threshold), and global refines that reuse the fixed tokens' keys and values (refresh r)
sched = []
if schedules:
    s0, never = seeds[0], 0  # refresh=0 (r=inf): the fixed tokens' keys/values from the stage's first forward only
    drafts = {'exact (1 token/forward)': '4:1.0', '1/forward, confidence': '4:1.0:order=confidence', '2/forward, random': '4:1.0:steps=2',
              '2/forward, confidence': '4:1.0:steps=2:order=confidence', '4/forward, confidence': '4:1.0:steps=1:order=confidence',
              'threshold 0.9': '4:1.0:threshold=0.9', 'threshold 0.7': '4:1.0:threshold=0.7'}
    refines = {'exact (1 token/forward, r=1)': 'L:{g}', '1/forward, confidence, r=1': 'L:{g}:order=confidence', 'r=4': 'L:{g}:refresh=4', 'r=inf': f'L:{{g}}:refresh={never}',
               'r=inf, 8 steps, confidence': f'L:{{g}}:steps=8:order=confidence:refresh={never}',
               'r=1, 4 steps, confidence': 'L:{g}:steps=4:order=confidence',
               'r=inf, 4 steps, confidence': f'L:{{g}}:steps=4:order=confidence:refresh={never}',
               'r=inf, 2 steps, confidence': f'L:{{g}}:steps=2:order=confidence:refresh={never}',
               'r=inf, threshold 0.9': f'L:{{g}}:threshold=0.9:refresh={never}'}
    for name, d in drafts.items():
        row(s0, 'did', f'draft {name}', d, table=sched)
    for g in (0.25, 0.5):
        for name, r in refines.items():
            row(s0, 'did', f'exact draft + refine γ={g} {name}', f'4:1.0,{r.format(g=g)}', table=sched)
        row(s0, 'did', f'draft 2/forward conf. + refine γ={g} r=inf, threshold 0.9',
            f"4:1.0:steps=2:order=confidence,{refines['r=inf, threshold 0.9'].format(g=g)}", table=sched)
        row(s0, 'did', f'draft 1/forward conf. + refine γ={g} r=inf, 4 steps, confidence',
            f"4:1.0:order=confidence,{refines['r=inf, 4 steps, confidence'].format(g=g)}", table=sched)

# the reference: real validation text, scored the same way
val = np.fromfile(os.path.join(out_dir, 'data', dataset, 'val.bin'), dtype=np.uint16)
rng = np.random.default_rng(0)
texts = ['<|endoftext|>' + ''.join(meta['chars'][j] if j < len(meta['chars']) else ' ' for j in val[s:s + seq_len - 1])
         for s in rng.integers(0, len(val) - seq_len, num_samples)]
(mean, std, _, per), ent = Judge(os.path.join(out_dir, judge_ckpt)).score(texts, seq_len)
rates = [real_word_rate(t, vocab) for t in texts]
real = dict(gen_ppl=mean, gen_ppl_sem=std / math.sqrt(len(per)), entropy=ent, real_word_rate=float(np.mean(rates)))

# 5. results
settings = {k: globals()[k] for k in ('text', 'seq_len', 'n_layer', 'n_head', 'n_embd', 'batch_size', 'learning_rate',
                                       'warmup_iters', 'decay_lr', 'ema_decay', 'pretrain_iters', 'finetune_iters', 'budget_frac',
                                       'block_mix', 'judge_iters', 'num_samples', 'gammas', 'seeds', 'sample_seed')}
settings['text'] = [os.path.relpath(f, here) for f in files]  # the same wherever the checkout lives
json.dump(dict(settings=settings, models=models, nelbo=nelbos, train_seconds=times, real_text=real, rows=rows,
               schedules=sched), open(results[0], 'w'), indent=1)
judge_nelbo = run('train.py', f'--out_dir={judge}', '--init_from=resume', '--eval_only=True', '--eval_iters=64')[0]
with open(results[1], 'w') as f:
    f.write(f"Settings: {json.dumps(settings)}\n\nJudge: {judge_nelbo.strip().splitlines()[-1]}\n\n")
    f.write("| seed | model | fine-tune iters | val NELBO B=4 | val NELBO B=L |\n|---|---|---|---|---|\n")
    for seed, ms in models.items():
        for role, folder in ms.items():
            n = nelbos[folder]
            it = {'pretrain': pretrain_iters, 'baseline': finetune_iters, 'did': round(budget_frac * finetune_iters),
                  'did_equal': finetune_iters}[role]
            f.write(f"| {seed} | {role} | {it} | {n.get('val/nelbo_B4', float('nan')):.4f} | {n.get(f'val/nelbo_B{seq_len}', float('nan')):.4f} |\n")
    f.write("\n| seed | model | setting | Gen PPL (mean ± s.e.) | entropy | real-word rate | forwards / sample | seconds |\n"
            "|---|---|---|---|---|---|---|---|\n")
    f.write(f"| - | real text | validation windows | {real['gen_ppl']:.2f} ± {real['gen_ppl_sem']:.2f} | {real['entropy']:.3f} | "
            f"{real['real_word_rate']:.3f} | - | - |\n")
    for r in rows:
        f.write(f"| {r['seed']} | {r['model']} | {r['label']} | {r['gen_ppl']:.2f} ± {r['gen_ppl_sem']:.2f} | {r['entropy']:.3f} | "
                f"{r['real_word_rate']:.3f} | {r['forwards']:.0f} | {r['seconds']:.1f} |\n")
    if sched:
        f.write("\nSampling schedules, DiD model, seed {}:\n\n| schedule | Gen PPL (mean ± s.e.) | entropy | real-word rate | "
                "forwards / sample | token-forwards / sample | seconds |\n|---|---|---|---|---|---|---|\n".format(seeds[0]))
        for r in sched:
            f.write(f"| {r['label']} | {r['gen_ppl']:.2f} ± {r['gen_ppl_sem']:.2f} | {r['entropy']:.3f} | {r['real_word_rate']:.3f} | "
                    f"{r['forwards']:.1f} | {r['token_forwards']:,.0f} | {r['seconds']:.1f} |\n")
print(open(results[1]).read())
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    colors = {'baseline': 'C3', 'did': 'C0', 'did_equal': 'C2'}
    for ax, x, xl in ((axes[0], 'seconds', f'wall time for {num_samples} samples (s)'), (axes[1], 'forwards', 'forward passes per sample')):
        for r in rows:
            ax.errorbar(r[x], r['gen_ppl'], yerr=r['gen_ppl_sem'], fmt='o', color=colors[r['model']], ms=4)
            ax.annotate(f"{r['model']} {r['label'].replace(' refine', '')} s{r['seed']}", (r[x], r['gen_ppl']), fontsize=5)
        ax.axhline(real['gen_ppl'], color='gray', ls=':', lw=1)
        ax.set_xlabel(xl)
    axes[0].set_ylabel('Gen PPL under the AR judge (lower is better)')
    fig.suptitle(f'DiD at toy scale: {n_layer}x{n_embd}, L={seq_len}, characters ({os.path.basename(text.rstrip("/"))}); '
                 f'dotted: real text')
    fig.tight_layout()
    fig.savefig(results[2], dpi=150)
    print(f"wrote {results[2]}")
    if sched:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, (x, y, xl, yl) in zip(axes, (('seconds', 'gen_ppl', 'wall time (s)', 'Gen PPL (lower is better)'),
                                             ('forwards', 'gen_ppl', 'forward passes per sample', 'Gen PPL'),
                                             ('seconds', 'real_word_rate', 'wall time (s)', 'real-word rate (higher is better)'))):
            for r in sched:
                c = 'C0' if r['label'].startswith('draft') else ('C1' if 'γ=0.25' in r['label'] else 'C2')
                ax.errorbar(r[x], r[y], yerr=r['gen_ppl_sem'] if y == 'gen_ppl' else None, fmt='o', color=c, ms=4)
                ax.annotate(r['label'].replace('exact draft + ', '').replace('refine ', ''), (r[x], r[y]), fontsize=5)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            if y == 'gen_ppl':
                ax.set_yscale('log')  # several tokens per forward can be an order of magnitude worse
        fig.suptitle(f'sampling schedules of the DiD model ({num_samples} samples each): blue drafts, orange '
                     f'draft + refine γ=0.25, green γ=0.5')
        fig.tight_layout()
        fig.savefig(results[3], dpi=150)
except ImportError:
    print("matplotlib is not installed: no plot (pip install matplotlib)")
print(f"training seconds: {json.dumps(times)}")
