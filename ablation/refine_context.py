"""
Why the refine does not beat the draft at toy scale: is it the global view, or what the refine does to entropy?

$ python ablation/refine_context.py --out_dir=ablation --overwrite=True   # after python ablate.py --out_dir=ablation

On the seed's DiD, block-4-only and baseline models, the same 64 drafts (random order, T = 1, the ablation's
sample seeds) are refined with the paper's snapshot remasking (gamma 0.25, one token per forward) by a stage of
block size 4, 16, 64 or L: the same network, seeing only the left context and its own block (4), or ever more
of the sequence, up to all of it (L, the paper's refine). Each row is scored twice: paired against the global
refine, and against the draft's own temperature frontier at the row's entropy (the draft swept over T, with two
colder points added here, interpolated as ablate.py does): how much Gen PPL the refine costs beyond what a
lower temperature gives at the same entropy. Writes out_dir/refine_context.json and prints the table.
"""

import json
import os
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, '..'))
from configurator import child, configure, fail  # noqa: E402
from judge import at_entropy, boot_se  # noqa: E402

# -----------------------------------------------------------------------------
out_dir = 'ablation'            # ablate.py's out_dir (its results.json, runs, judge and data)
seed = 1337                     # which training seed's models
blocks = ['4', '16', '64', 'L']  # the refine stage's block sizes
cold = [0.6, 0.7]               # draft temperatures added below the ablation's sweep (the refine lowers entropy)
overwrite = False               # replace out_dir/refine_context.json
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
out = os.path.join(out_dir, 'refine_context.json')
if os.path.exists(out) and not overwrite:
    fail(f"{out} already holds results: pass --overwrite=True to remake them")
if not os.path.exists(os.path.join(out_dir, 'results.json')):
    fail(f"{out_dir}/results.json not found: run python ablate.py --out_dir={out_dir} first")
R = json.load(open(os.path.join(out_dir, 'results.json')))
if str(seed) not in R['models']:
    fail(f"--seed={seed} is not one of the ablation's training seeds {list(R['models'])}")
S = R['settings']
judge = next(f for f in os.listdir(out_dir) if f.startswith('judge-') and os.path.isdir(os.path.join(out_dir, f)))
data = next(iter(os.listdir(os.path.join(out_dir, 'data'))))


def row(folder, stages, T):
    cmd = [sys.executable, os.path.join(here, '..', 'sample.py'), f'--out_dir={folder}', f"--num_samples={S['num_samples']}",
           f"--batch_size={S['num_samples']}", f'--stages={stages}', '--remask=snapshot', '--order=random',
           f'--temperature={T}', '--eval', f'--judge={judge}/ckpt.pt', f"--seed={S['sample_seed']}",
           f'--words_from=data/{data}/train_words.txt', '--eval_out=refine_context_row.json', '--overwrite=True']
    child(cmd, os.path.join(out_dir, 'refine_context.log'), cwd=out_dir)  # sample.py's error, if any, stops us here
    return json.load(open(os.path.join(out_dir, 'refine_context_row.json')))  # sample.py's --eval row


rows, table = {}, []
idx = np.random.default_rng(0).integers(0, S['num_samples'], (1000, S['num_samples']))  # bootstrap over sample seeds
for role in ('did', 'small', 'baseline'):
    folder = R['models'][str(seed)][role]
    curve = [row(folder, '4:1.0', T) for T in cold]
    curve += [next(r for r in R['rows'] if r['seed'] == seed and r['model'] == role and
                   r['label'] == f'draft, random order, T={T:g}') for T in S['temperatures']['random']]
    refs = {b: row(folder, f'4:1.0,{b}:{S["gamma"]}', 1.0) for b in blocks}
    g = np.array(refs['L']['gen_ppls'])
    for b, r in refs.items():
        ppl = np.array(r['gen_ppls'])
        above = np.nanmean(ppl) - at_entropy(curve, r)
        draws = np.array([np.nanmean(ppl[i]) - at_entropy(curve, r, i) for i in idx])
        d = ppl - g
        table.append(dict(model=role, block=b, gen_ppl=r['gen_ppl'], sem=r['gen_ppl_sem'], entropy=r['entropy'],
                          real_words=r['real_word_rate'], minus_global=float(np.nanmean(d)),
                          minus_global_sem=float(np.nanstd(d, ddof=1) / np.sqrt(np.sum(~np.isnan(d)))),
                          above_frontier=float(above), above_frontier_sem=boot_se(draws)))
        t = table[-1]
        print(f"{role:9} refine block {b:>3}: Gen PPL {t['gen_ppl']:6.2f} ± {t['sem']:.2f} at entropy {t['entropy']:.3f}, "
              f"− global {t['minus_global']:+.2f} ± {t['minus_global_sem']:.2f}, above the draft's frontier "
              f"{t['above_frontier']:+.2f} ± {t['above_frontier_sem']:.2f}", flush=True)
    rows[role] = dict(curve=curve[:len(cold)], refines=refs)
json.dump(dict(seed=seed, blocks=blocks, cold=cold, table=table, rows=rows), open(out, 'w'))
print(f"wrote {out}")
