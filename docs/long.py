"""
Text longer than the training length, measured: does refining window by window help every window, or only the
first (the one that starts, as in training, at the sequence's own <|endoftext|>)?

$ python docs/long.py --model=ablation/did-... --judge=ablation/judge-.../ckpt.pt --data=ablation/data/text-... --overwrite=True

Draws num_samples sequences of max_len tokens with did.generate_long (draft with blocks of 4, then a snapshot
refine of gamma 0.25 in windows of L: [0, L), then <|endoftext|> + the next L - 1 tokens, ...), and scores the
draft and the refined text window by window: the real-word rate of the words inside each window, and the
judge's NLL per character (the AR judge reads the whole sample through its sliding window). Writes docs/long.json.
"""

import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from configurator import configure, fail, guard  # noqa: E402
from beyond import generate_long  # noqa: E402
from did import Sampling, Stage  # noqa: E402
from judge import load_run, real_word_rate  # noqa: E402

# -----------------------------------------------------------------------------
model = ''                      # the run to sample (its out_dir)
judge = ''                      # an AR judge's ckpt.pt trained on the same characters
data = ''                       # the data folder (train_words.txt: the real words)
num_samples = 32
max_len = 1024                  # 4 L at the toy's L = 256
order = 'random'                # the paper's sampler (confidence: sample.py's default)
seed = 1337
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'long.json')
overwrite = False               # replace the results already at out
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
if os.path.exists(out) and not overwrite:
    fail(f"{out} already holds results: pass --overwrite=True to remake them, or --out=another.json")
if not (model and judge and data):
    fail("give --model=RUN_DIR, --judge=AR_CKPT and --data=DATA_DIR (ablate.py's out_dir holds all three)")
net, jd, _, tok, vocab = guard(load_run, model, judge, data)
L = net.config.seq_len
res = generate_long(net, [tok.eot], list(range(seed, seed + num_samples)), max_len,
                    Sampling((Stage(4, order=order), Stage(L, 0.25, order=order)), nucleus='standard'))
bounds = [(0, L)] + [(a, min(a + L - 1, max_len)) for a in range(L, max_len, L - 1)]
table = []
for w, (a, b) in enumerate(bounds):
    row = dict(window=w, start=a, end=b)
    for kind in ('draft', 'tokens'):
        rates = [real_word_rate(tok.decode(r[kind][a:b]), vocab) for r in res]
        rates = [x for x in rates if x == x]
        row[kind] = (float(np.mean(rates)), float(np.std(rates, ddof=1) / math.sqrt(len(rates))))
    d = [real_word_rate(tok.decode(r['tokens'][a:b]), vocab) - real_word_rate(tok.decode(r['draft'][a:b]), vocab) for r in res]
    d = [x for x in d if x == x]
    row['refined - draft'] = (float(np.mean(d)), float(np.std(d, ddof=1) / math.sqrt(len(d))))
    table.append(row)
    print(f"window {w} [{a}, {b}): real words, draft {row['draft'][0]:.3f} ± {row['draft'][1]:.3f}, refined "
          f"{row['tokens'][0]:.3f} ± {row['tokens'][1]:.3f}, paired difference {row['refined - draft'][0]:+.3f} ± "
          f"{row['refined - draft'][1]:.3f}")
scores = {}
for kind in ('draft', 'tokens'):
    (mean, std, _, per), _ = jd.score([tok.decode(r[kind]) for r in res], max_len)
    scores[kind] = dict(gen_ppl=mean, sem=std / math.sqrt(len(per)), per=per)
    print(f"{'draft' if kind == 'draft' else 'refined'}: Gen PPL of the whole {max_len}-character samples {mean:.2f} ± "
          f"{std / math.sqrt(len(per)):.2f}")
json.dump(dict(settings=dict(model=model, judge=judge, num_samples=num_samples, max_len=max_len, order=order, seed=seed),
               windows=table, gen_ppl=scores, example=dict(draft=tok.decode(res[0]['draft']), refined=tok.decode(res[0]['tokens']))),
          open(out, 'w'), indent=1)
print(f"wrote {out}")
