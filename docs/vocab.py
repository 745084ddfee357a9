"""
The compact vocabulary, measured: the quick start's model and recipe (config/train_tinystories.py) trained on the
same TinyStories text as GPT-2 tokens twice, with GPT-2's full 50,257 ids and with only the ids the text uses
(prepare_owt.py --compact), one after the other on the same machine: parameters, seconds per iteration, and the
validation NELBO at each evaluation against the minutes it took. Writes docs/vocab.json.

$ python prepare_owt.py --dataset=tinystories-valid --out_dir=data/tinystories_full_vocab
$ python prepare_owt.py --dataset=tinystories-valid --compact --out_dir=data/tinystories
$ python docs/vocab.py --overwrite=True
"""

import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, '..'))
from configurator import child, configure, fail, print_line  # noqa: E402

# -----------------------------------------------------------------------------
datasets = {'full': 'tinystories_full_vocab', 'compact': 'tinystories'}  # data/<name>, prepared as above
max_iters = 150                 # each run's iterations (the same tokens for both)
eval_interval = 50              # evaluate (16 batches, B = 4 and B = L) every this many iterations
out = os.path.join(here, 'vocab.json')
overwrite = False               # replace the results already at out, and the runs out-vocab-full/-compact
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
if os.path.exists(out) and not overwrite:
    fail(f"{out} already holds results: pass --overwrite=True to remake them, or --out=another.json")
for kind in datasets:
    if os.path.exists(os.path.join(f'out-vocab-{kind}', 'ckpt.pt')) and not overwrite:
        fail(f"out-vocab-{kind} already holds a trained model: pass --overwrite=True to retrain it")
for name in datasets.values():
    if not os.path.exists(os.path.join('data', name, 'meta.json')):
        fail(f"data/{name} not found: prepare it as this script's docstring says")

runs = {}
for kind, name in datasets.items():
    out_dir = f'out-vocab-{kind}'
    print(f"training on data/{name} ({kind} vocabulary) for {max_iters} iterations", flush=True)
    child([sys.executable, os.path.join(here, '..', 'train.py'), os.path.join(here, '..', 'config', 'train_tinystories.py'),
           f'--dataset={name}', f'--out_dir={out_dir}', f'--max_iters={max_iters}', f'--eval_interval={eval_interval}',
           *(['--overwrite=True'] if overwrite else [])], echo=print_line)
    evals = [e for e in map(json.loads, open(os.path.join(out_dir, 'log.jsonl'))) if 'seconds' in e]  # its evaluations
    meta = json.load(open(os.path.join('data', name, 'meta.json')))
    runs[kind] = dict(dataset=name, vocab_size=meta['vocab_size'], evals=evals[-(max_iters // eval_interval):])
for kind, r in runs.items():
    e = r['evals'][-1]
    print(f"{kind:8} vocab {r['vocab_size']:6,}: {e['seconds'] / 60:.1f} min for {e['iter']} iterations, "
          f"val NELBO B=4 {e['val/nelbo_B4']:.4f}")
ratio = runs['full']['evals'][-1]['seconds'] / runs['compact']['evals'][-1]['seconds']
print(f"the full vocabulary took {ratio:.2f}x as long for the same iterations")
json.dump(dict(max_iters=max_iters, eval_interval=eval_interval, runs=runs, time_ratio=ratio), open(out, 'w'), indent=1)
