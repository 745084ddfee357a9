# any length, stopping at the end: the quick start's model on WebText excerpts as characters, where every
# document ends in <|endoftext|>, so the model learns where text stops (README: Any length)
# $ wget -nc https://raw.githubusercontent.com/Isinlor/AdversarialDecoder/2aaaf1fc62f5e3f1b4f43d09a04f69ac521544cc/data/webtext.test.jsonl
# $ python prepare_owt.py --input webtext.test.jsonl --tokenizer=char --out_dir=data/webtext_char
# $ python train.py config/train_webtext_char.py
# $ python sample.py --out_dir=out-webtext-char --max_len=1024 --stop_at_eos=True --num_samples=16 --batch_size=16 --order=random --top_p=1.0

out_dir = 'out-webtext-char'
dataset = 'webtext_char'
tokenizer = 'char'
eval_interval = 500
log_interval = 50
eval_iters = 16
seq_len = 256
n_layer = 4
n_head = 4
n_embd = 128
batch_size = 8
total_batch_size = 8 * 256      # one micro-step per iteration
block_mix = {4: 0.9, 256: 0.1}  # mix-scale: small drafting blocks, sometimes the whole sequence
noise_clip = {4: (0.5, 1.0)}
eval_block_sizes = [4, 256]
learning_rate = 3e-3
warmup_iters = 100
decay_lr = True
max_iters = 1800
ema_decay = 0.999
device = 'cpu'
compile = False
