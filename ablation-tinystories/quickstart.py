"""
Trained models under the token protocol's judge, compared at a matched entropy: the quick start's model against
another run of the same shape (here 1,200 iterations at a constant learning rate), draft and refine, in Gen PPL
and the two coherence measures.

$ python ablate.py config/ablate_tinystories.py --out_dir=ablation-tinystories   # the judge and real text's line
$ python train.py config/train_tinystories.py --max_iters=1200 --decay_lr=False --out_dir=out-constant
$ python ablation-tinystories/quickstart.py --out_dir=ablation-tinystories \
    --models="{'quickstart': 'out-tinystories', 'constant': 'out-constant'}"
$ python ablation-tinystories/quickstart.py ... --order=confidence --temperatures="[0.8, 1.0, 1.2, 1.4, 1.6]"
$ python ablation-tinystories/quickstart.py ... --remasks="['snapshot', 'posthoc', 'random']" --overwrite=True
(--overwrite=True remakes compare.json, and any row there from another checkpoint or settings, without asking)

Each model samples the protocol's rows: 48 stories from <|endoftext|> with its sampler (random order, or --order;
top-p 0.9, its sample seeds, its judge), the draft alone and the draft + the paper's exact snapshot refine at its
gamma (and with --remasks, the refine that remasks by a posthoc score or at random: the paper's ablation), over the
temperatures; each row is sample.py's --eval row, kept in out_dir/quickstart/ORDER/ (a row already
there from the same checkpoint and settings is reused; a model whose checkpoint is not here, as in a clone of ours,
is read from its rows there alone). Every (model, stage) is read off at real text's entropy as
ablate.py reads its samplers (log Gen PPL interpolated between the two temperatures that bracket it; the halves MI
and the share of names kept interpolated as they are), with one bootstrap over the sample seeds for all rows, so the
differences between models, between a model's refines and its draft, and between its snapshot refine and the others
are paired. Writes out_dir/quickstart/ORDER/compare.json and prints the table.
"""

import json
import os
import signal
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, '..'))
from configurator import check, child, configure, fail, guard  # noqa: E402
from judge import boot_se, matched_entropy  # noqa: E402

# -----------------------------------------------------------------------------
out_dir = 'ablation-tinystories'  # ablate.py's out_dir on tokens (its results.json: settings, real text; its judge)
models = {'quickstart': 'out-tinystories'}  # name -> a run's out_dir (train.py's); differences are against the first
temperatures = [0.8, 1.0, 1.2]  # each model's sweep, ascending: it must bracket real text's entropy
order = 'random'                # the order tokens are revealed in: the protocol's random, or sample.py's confidence
remasks = ['snapshot']          # the refine's choice of what to remask: snapshot (DiD's); posthoc and random: the paper's ablation
overwrite = False               # replace rows made with other settings, and compare.json
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
signal.signal(signal.SIGINT, lambda *_: sys.exit("error: interrupted: run the same command again to continue where it stopped"))
results = os.path.join(out_dir, 'results.json')


def check_settings():
    """Everything the run needs, before a row is sampled."""
    check(len(temperatures) >= 2 and temperatures == sorted(set(temperatures)),
          f"--temperatures={temperatures}: give two or more, ascending, around real text's entropy")
    check(order in ('random', 'confidence'), f"--order={order!r}: use random (the protocol's) or confidence (sample.py's)")
    check(isinstance(remasks, list) and remasks and all(r in ('snapshot', 'posthoc', 'random') for r in remasks)
          and len(set(remasks)) == len(remasks),
          f"--remasks={remasks}: name some of snapshot, posthoc, random, each once")
    check(models, "--models is empty: name at least one run, e.g. --models=\"{'quickstart': 'out-tinystories'}\"")
    check(os.path.exists(results), f"{results} not found: run python ablate.py config/ablate_tinystories.py --out_dir={out_dir} first")
    R = json.load(open(results))
    check('spliced_text' in R and R['rows'], f"{results} has no token protocol's rows: use ablate.py's out_dir on TinyStories tokens")
    judge = os.path.join(out_dir, os.path.dirname(R['rows'][0]['judge']))
    check(overwrite or not os.path.exists(os.path.join(out_dir, 'quickstart', order, 'compare.json')),
          f"{out_dir}/quickstart/{order}/compare.json exists: pass --overwrite=True to remake it")
    return R, judge


R, judge = guard(check_settings)
S, real = R['settings'], R['real_text']
stages = {'draft': '4:1.0'}  # the protocol's draft, and draft + the paper's refine with each remasking
stages.update({'refine' + ('' if r == 'snapshot' else f'_{r}'): f"4:1.0,L:{S['gamma']}" for r in remasks})
remask_of = lambda stage: stage.removeprefix('refine_') if stage.startswith('refine_') else 'snapshot'
rows_dir = os.path.join(out_dir, 'quickstart', order)


def row_path(name, stage, T):
    return os.path.join(rows_dir, f'{name}_{stage}_T{T:g}.json')


def need_judge():  # before a row is sampled
    if not os.path.isdir(judge):
        fail(f"{judge}, the protocol's judge, is not in {out_dir}: rerun ablate.py there to train it")


iters = {}  # each model's iteration: a row from an earlier state of the same run is not reused
for name, d in models.items():  # a model without its checkpoint is read from its rows alone (ours, in a clone): all must be here
    ckpt = os.path.join(d, 'ckpt.pt')
    iters[name] = torch.load(ckpt, map_location='cpu', mmap=True, weights_only=False)['iter_num'] if os.path.exists(ckpt) else None
    missing = [p for p in (row_path(name, s, T) for s in stages for T in temperatures) if not os.path.exists(p)]
    if iters[name] is None and missing:
        fail(f"--models: {ckpt} ({name}) not found, and no row {missing[0]} to read: train it with python train.py first")
    if iters[name] is None:  # said, so that a mistyped out_dir is not taken for the user's own model
        print(f"{name}: {ckpt} not found: reading its rows in {rows_dir} as they are, from whichever checkpoint made them", flush=True)
    if missing:  # (a row to remake asks again in row())
        need_judge()
os.makedirs(rows_dir, exist_ok=True)


def row(name, stage, T):
    """sample.py's --eval row for one model, stage and temperature; reused when one from this checkpoint, with these
    settings, is there already (from any checkpoint where the model's is not here)."""
    path = row_path(name, stage, T)
    want = dict(stages=stages[stage], remask=remask_of(stage), temperature=T, num_samples=S['num_samples'], seed=S['sample_seed'])
    if iters[name] is not None:
        want.update(checkpoint=os.path.abspath(os.path.join(models[name], 'ckpt.pt')), iter_num=iters[name])
    if os.path.exists(path):
        r = json.load(open(path))
        same_order = all(f':order={order}:' in f'{st}:' for st in r.get('stages_run', '').split(','))
        same_judge = os.path.realpath(r['judge'].removesuffix('/ckpt.pt')) == os.path.realpath(judge)
        if {k: r.get(k) for k in want} == want and same_order and same_judge:
            return r
        if iters[name] is None:
            fail(f"{path} holds a row from other settings, and {models[name]}/ckpt.pt ({name}) is not here to remake "
                 f"it: train it with python train.py first")
        if not overwrite:
            fail(f"{path} holds a row from another checkpoint or settings: pass --overwrite=True to remake it")
    need_judge()
    print(f"sampling {name} {stage} T={T:g} ({S['num_samples']} samples: {'under a minute' if stage == 'draft' else 'about two minutes'} on a 2-core CPU)", flush=True)
    cmd = [sys.executable, os.path.join(here, '..', 'sample.py'), f'--out_dir={models[name]}', f'--stages={stages[stage]}',
           f"--num_samples={S['num_samples']}", f"--batch_size={S['num_samples']}", f'--order={order}', f'--remask={remask_of(stage)}',
           f'--temperature={T}', f"--seed={S['sample_seed']}", '--eval', f'--judge={judge}', f'--eval_out={path}',
           '--overwrite=True']
    child(cmd, os.path.join(out_dir, 'quickstart.log'), name=f"sample.py on {name} {stage} T={T:g}")  # its error stops us here
    return json.load(open(path))


curves = {(m, s): [row(m, s, T) for T in temperatures] for m in models for s in stages}
at = {}  # measure -> (estimates, bootstrap draws) per (model, stage), every curve read at real text's entropy
for key, log in (('gen_ppls', True), ('mis', False), ('name_shares', False)):
    at[key] = matched_entropy(curves, real['entropy'], key=key, log=log)
for (m, s), c in curves.items():
    if at['gen_ppls'][0][m, s] != at['gen_ppls'][0][m, s]:  # NaN: no two neighbouring temperatures bracket the target
        fail(f"{m} {s}: entropies {[round(r['entropy'], 3) for r in c]} at T={temperatures} miss real text's "
             f"{real['entropy']:.3f}: add a lower or higher temperature to --temperatures")


def diff(a, b):
    """a - b at real text's entropy, per measure, with its paired bootstrap s.e."""
    return {k: (float(at[k][0][a] - at[k][0][b]), boot_se(at[k][1][a] - at[k][1][b])) for k in at}


table = [dict(model=m, stage=s, **{k: (float(at[k][0][m, s]), boot_se(at[k][1][m, s])) for k in at}) for m, s in curves]
first = next(iter(models))
diffs = [dict(model=m, stage=s, minus=first, **diff((m, s), (first, s))) for m in models if m != first for s in stages]
diffs += [dict(model=m, stage=s, minus='draft', **diff((m, s), (m, 'draft'))) for m in models for s in stages if s != 'draft']
diffs += [dict(model=m, stage='refine', minus=s, **diff((m, 'refine'), (m, s))) for m in models for s in stages
          if s.startswith('refine_') and 'refine' in stages]  # snapshot against the other remaskings
print(f"at real text's entropy, {real['entropy']:.3f} (real text: Gen PPL {real['gen_ppl']:.2f}, halves MI {real['mi']:.3f}, "
      f"names kept {real['name_share']:.3f}; stories spliced from two: MI {R['spliced_text']['mi']:.3f}, names "
      f"{R['spliced_text']['name_share']:.3f})")
for t in table + diffs:
    label = f"{t['model']} {t['stage']}" + (f" - {t['minus']}" if 'minus' in t else '')
    print(f"{label:<32} Gen PPL {t['gen_ppls'][0]:+9.2f} ± {t['gen_ppls'][1]:.2f}   halves MI {t['mis'][0]:+.3f} ± "
          f"{t['mis'][1]:.3f}   names kept {t['name_shares'][0]:+.3f} ± {t['name_shares'][1]:.3f}")
path = os.path.join(rows_dir, 'compare.json')
json.dump(dict(out_dir=out_dir, judge=judge, models=models, temperatures=temperatures, order=order, remasks=remasks, stages=stages, real_text=real,
               spliced_text=R['spliced_text'], table=table, differences=diffs), open(path + '.tmp', 'w'), indent=1)
os.replace(path + '.tmp', path)  # whole, or not at all
print(f"wrote {path} (each measure: estimate, bootstrap s.e.)")
