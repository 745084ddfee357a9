"""
Infilling, measured: DiD's global stage against left-to-right block drafting of the same holes, on held-out text.

$ python docs/infill.py --model=ablation/did-... --judge=ablation/judge-.../ckpt.pt --data=ablation/data/text-... --overwrite=True

Takes num_texts validation windows of seq_len characters, cuts holes holes of hole_len characters into each
(after position 0, not overlapping, the same for every method), and fills them with each method, one sample per
window (the same seed for every method). Scores the filled characters: how many equal the original text, their
NLL under the AR judge (each filled character given the text before it, which for every method is the original
text up to the hole and its own fill inside it), and the real-word rate of the words that touch a hole.
Writes docs/infill.json (the settings, every fill and the scores) and prints a table.
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from configurator import configure, fail, guard  # noqa: E402
from beyond import infill  # noqa: E402
from did import Sampling, Stage  # noqa: E402
from judge import load_run, words  # noqa: E402

# -----------------------------------------------------------------------------
model = ''                      # the run to fill with (its out_dir)
judge = ''                      # an AR judge's ckpt.pt (train.py --causal=True) trained on the same characters
data = ''                       # the data folder the runs were trained on (val.bin, meta.json, train_words.txt)
num_texts = 64                  # validation windows
holes = 3                       # holes per window
hole_len = 8                    # characters per hole
seed = 1337
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'infill.json')
overwrite = False               # replace the results already at out
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
if os.path.exists(out) and not overwrite:
    fail(f"{out} already holds results: pass --overwrite=True to remake them, or --out=another.json")
if not (model and judge and data):
    fail("give --model=RUN_DIR, --judge=AR_CKPT and --data=DATA_DIR (ablate.py's out_dir holds all three)")
net, jd, meta, tok, vocab = guard(load_run, model, judge, data)
L, mask_id = net.config.seq_len, net.config.mask_id
val = np.fromfile(os.path.join(data, 'val.bin'), dtype=np.uint16)
rng = np.random.default_rng(seed)
C = dict(order='confidence')  # the most probable draw first, as sample.py by default
methods = {'global stage (B = L)': [Stage(L, **C)], 'global stage + refine γ=0.25': [Stage(L, **C), Stage(L, 0.25, **C)],
           'left-to-right blocks of 4': [Stage(4, **C)], 'left-to-right blocks of 4 + global refine γ=0.25': [Stage(4, **C), Stage(L, 0.25, **C)]}
results = {name: dict(match=[], nll=[], words=[], fills=[]) for name in methods}
for n in range(num_texts):
    s = int(rng.integers(0, len(val) - L))
    text = [meta['eot']] + val[s:s + L - 1].astype(int).tolist()
    starts = sorted(rng.choice(np.arange(1, L - hole_len, hole_len), holes, replace=False).tolist())  # disjoint slots
    hole = [p for a in starts for p in range(a, a + hole_len)]
    ids = [mask_id if p in hole else t for p, t in enumerate(text)]
    for name, stages in methods.items():
        got = infill(net, ids, [seed + n], Sampling(tuple(stages), nucleus='standard'))['tokens'][0].tolist()
        filled = [got[p] for p in hole]
        r = results[name]
        r['match'].append(sum(a == b for a, b in zip(filled, (text[p] for p in hole))) / len(hole))
        with torch.no_grad():  # the judge's NLL of each filled character given the text before it
            logp = torch.log_softmax(jd.logits(torch.tensor(got)).double(), -1)
        r['nll'].append(-sum(logp[p - 1, got[p]].item() for p in hole) / len(hole))
        spans = [tok.decode(got[max(a - 12, 0):a + hole_len + 12]) for a in starts]  # the words around each hole
        ws = [w for sp in spans for w in words(sp)]
        r['words'].append(sum(w in vocab for w in ws) / len(ws) if ws else float('nan'))
        if n < 3:
            r['fills'].append(dict(original=tok.decode(text), holes=starts, filled=tok.decode(got)))
table = []
for name, r in results.items():
    row = {k: (float(np.nanmean(r[k])), float(np.nanstd(r[k], ddof=1) / math.sqrt(len(r[k])))) for k in ('match', 'nll', 'words')}
    table.append(dict(method=name, **row))
    print(f"{name:50} matches the text {row['match'][0]:.3f} ± {row['match'][1]:.3f}   judge NLL {row['nll'][0]:.3f} ± "
          f"{row['nll'][1]:.3f} nats/char   real words {row['words'][0]:.3f} ± {row['words'][1]:.3f}")
first = results[next(iter(methods))]
for other in list(methods)[1:]:
    d = np.array(results[other]['nll']) - np.array(first['nll'])
    print(f"paired NLL, {other} − global stage: {d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}")
json.dump(dict(settings=dict(model=model, judge=judge, data=data, num_texts=num_texts, holes=holes, hole_len=hole_len, seed=seed),
               table=table, per_text={k: {m: v[m] for m in ('match', 'nll', 'words')} for k, v in results.items()},
               examples={k: v['fills'] for k, v in results.items()}), open(out, 'w'), indent=1)
print(f"wrote {out}")
