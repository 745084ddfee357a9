# The learning curve of the side-by-side with the official BD3-LM code (docs/learning.md), at its settings: Tiny Shakespeare
# as characters, 4 layers x 128 wide, 4 heads, L=256, batch 8, AdamW 2e-3 with 50 warmup steps, EMA 0.995,
# block 4 only, t in [0.5, 1] with resampling, 600 steps; validation NELBO at B=4 every 100 steps on 64 batches.
# About 5 minutes on a 2-core CPU:
# $ python prepare_owt.py --input tinyshakespeare.txt --tokenizer=char --out_dir=data/shakespeare_char
# $ python train.py config/curve_shakespeare_char.py --seed=1337 --out_dir=out-curve-1337

out_dir = 'out-curve'
dataset = 'shakespeare_char'
tokenizer = 'char'
bos = False                     # as in that comparison: plain windows of the text
seq_len = 256
n_layer = 4
n_head = 4
n_embd = 128
batch_size = 8
total_batch_size = 8 * 256
block_mix = {4: 1.0}
noise_clip = {4: (0.5, 1.0)}
eval_block_sizes = [4]
learning_rate = 2e-3
warmup_iters = 50
max_iters = 600
ema_decay = 0.995
eval_interval = 100
eval_iters = 64
log_interval = 100
device = 'cpu'
compile = False
