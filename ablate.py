"""
The paper's ablation table at toy scale, in one command (about 30 minutes on a 2-core CPU).

$ python ablate.py                                    # Tiny Shakespeare as characters, from ../shared/data/text
$ python ablate.py --text=my.txt --max_iters=2000     # any text; more training

Trains, at the same size and budget: (1) a mix-scale DiD model (block 4 with p=0.9, the whole sequence with
p=0.1), (2) a small-block-only model (block 4 always), (3) a causal AR judge. Then samples each setting with
sample.py --eval (Gen PPL under the AR judge, unigram entropy, forward passes): draft only; draft + global
refine with snapshot / posthoc / random remasking; the small-only model with and without refinement; a gamma
sweep; refine block sizes. Writes out_dir/ablation.md and, if matplotlib is installed, out_dir/pareto.png.
"""

import json
import os
import subprocess
import sys

from did import configure

# -----------------------------------------------------------------------------
text = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'shared', 'data', 'text', 'tinyshakespeare.txt')
out_dir = 'ablation'            # everything goes here: data, the three runs, the table, the plot
seq_len = 256                   # L
n_layer = 4                     # all three models share this shape and budget
n_head = 4
n_embd = 128
batch_size = 8
max_iters = 800                 # training iterations per model
learning_rate = 2e-3
num_samples = 32                # samples per table row
gammas = [0.1, 0.25, 0.5, 0.75]  # the remask-ratio sweep (snapshot, global refine)
refine_blocks = [16, 64]        # refine block sizes besides L (gamma 0.25)
seed = 1337
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
here = os.path.dirname(os.path.abspath(__file__))
os.makedirs(out_dir, exist_ok=True)


def run(script, *args):
    print(f"$ python {script} {' '.join(args)}", flush=True)
    out = subprocess.run([sys.executable, os.path.join(here, script), *args], cwd=out_dir, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: {script} failed:\n{out.stderr}")
    return out.stdout


if not os.path.exists(os.path.join(out_dir, 'data', 'text', 'train.bin')):
    run('prepare_owt.py', '--input', os.path.abspath(text), '--tokenizer=char', '--out_dir=data/text')
common = [f'--seq_len={seq_len}', f'--n_layer={n_layer}', f'--n_head={n_head}', f'--n_embd={n_embd}', '--dataset=text',
          f'--batch_size={batch_size}', f'--total_batch_size={batch_size * seq_len}', f'--max_iters={max_iters}',
          f'--eval_interval={max_iters}', '--eval_iters=8', f'--learning_rate={learning_rate}', '--warmup_iters=50',
          '--ema_decay=0.995', '--log_interval=100', '--device=cpu', '--compile=False', f'--seed={seed}',
          f'--eval_block_sizes=[4, {seq_len}]']
runs = {'mix': [f'--block_mix={{4: 0.9, {seq_len}: 0.1}}'], 'small': ['--block_mix={4: 1.0}'], 'ar': ['--causal=True']}
for name, extra in runs.items():
    if not os.path.exists(os.path.join(out_dir, name, 'ckpt.pt')):
        log = run('train.py', *common, *extra, f'--out_dir={name}')
        print(log.strip().splitlines()[-2], flush=True)  # the final evaluation line

rows = []
def evaluate(model, label, stages, remask='snapshot'):
    out = run('sample.py', f'--out_dir={model}', f'--num_samples={num_samples}', f'--batch_size={num_samples}',
              f'--stages={stages}', f'--remask={remask}', '--eval', '--judge=ar/ckpt.pt', f'--seed={seed}')
    row = json.loads(out.strip().splitlines()[-1])
    row.update(model=model, label=label)
    rows.append(row)
    print(f"  {label}: Gen PPL {row['gen_ppl']:.3f} ± {row['gen_ppl_std']:.3f}, entropy {row['entropy']:.3f}, "
          f"{row['forwards']:.0f} forwards", flush=True)

evaluate('mix', 'draft only (B=4)', '4:1.0')
for remask in ('snapshot', 'posthoc', 'random'):
    evaluate('mix', f'draft + global refine, {remask}, γ=0.25', '4:1.0,L:0.25', remask)
evaluate('small', 'small-block-only model: draft', '4:1.0')
evaluate('small', 'small-block-only model: + global refine, snapshot, γ=0.25', '4:1.0,L:0.25')
for g in gammas:
    if g != 0.25:
        evaluate('mix', f'γ sweep: snapshot, γ={g}', f'4:1.0,L:{g}')
for b in refine_blocks:
    evaluate('mix', f'refine block {b}: snapshot, γ=0.25', f'4:1.0,{b}:0.25')

with open(os.path.join(out_dir, 'ablation.md'), 'w') as f:
    f.write("| setting | model | Gen PPL (AR judge, mean ± std) | entropy | forwards / sample |\n|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['label']} | {r['model']} | {r['gen_ppl']:.3f} ± {r['gen_ppl_std']:.3f} | {r['entropy']:.3f} | {r['forwards']:.0f} |\n")
print(open(os.path.join(out_dir, 'ablation.md')).read())
try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r['forwards'], r['gen_ppl'], color='C0' if r['model'] == 'mix' else 'C3')
        ax.annotate(r['label'].replace('draft + global refine, ', '').replace('small-block-only model', 'small-only'),
                    (r['forwards'], r['gen_ppl']), fontsize=6)
    ax.set_xlabel('forward passes per sample')
    ax.set_ylabel('Gen PPL under the AR judge (lower is better)')
    ax.set_title(f'DiD at toy scale: {n_layer}x{n_embd}, L={seq_len}, characters')
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'pareto.png'), dpi=150)
    print(f"wrote {out_dir}/pareto.png")
except ImportError:
    print("matplotlib is not installed: no plot (pip install matplotlib)")
