# a small DiD on Tiny Shakespeare, characters: trains in minutes on a 2-core CPU
# $ python prepare_owt.py --input ../shared/data/text/tinyshakespeare.txt --tokenizer=char --out_dir=data/shakespeare_char
# $ python train.py config/train_shakespeare_char.py

out_dir = 'out-shakespeare-char'
dataset = 'shakespeare_char'
eval_interval = 100
log_interval = 10
eval_iters = 4
seq_len = 256
n_layer = 4
n_head = 4
n_embd = 256
batch_size = 8
total_batch_size = 8 * 256      # one micro-step per iteration
block_mix = {4: 0.9, 256: 0.1}  # mix-scale: small drafting blocks, sometimes the whole sequence
noise_clip = {4: (0.5, 1.0)}
eval_block_sizes = [4, 256]
learning_rate = 1e-3            # a small model trained briefly tolerates a higher lr
warmup_iters = 50
max_iters = 300
ema_decay = 0.99
device = 'cpu'
compile = False
