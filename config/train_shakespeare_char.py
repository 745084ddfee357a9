# the smoke run: a small DiD on Tiny Shakespeare as characters, about 9 minutes on a 2-core CPU
# $ curl -fLo tinyshakespeare.txt https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
# $ python prepare_owt.py --input tinyshakespeare.txt --tokenizer=char --out_dir=data/shakespeare_char
# $ python train.py config/train_shakespeare_char.py
# $ python sample.py --out_dir=out-shakespeare-char --num_samples=2 --show

out_dir = 'out-shakespeare-char'
dataset = 'shakespeare_char'
tokenizer = 'char'
eval_interval = 500
log_interval = 50
eval_iters = 16
seq_len = 256
n_layer = 4
n_head = 4
n_embd = 128                    # 4 x 128, as the character protocol (ablation/README.md)
batch_size = 8
total_batch_size = 8 * 256      # one micro-step per iteration
block_mix = {4: 0.9, 256: 0.1}  # mix-scale: small drafting blocks, sometimes the whole sequence
noise_clip = {4: (0.5, 1.0)}
eval_block_sizes = [4, 256]
learning_rate = 3e-3            # a small model trained briefly tolerates a higher lr
warmup_iters = 100
decay_lr = True                 # cosine to lr / 10: the last iterations refine
max_iters = 1800
ema_decay = 0.999
device = 'cpu'
compile = False
