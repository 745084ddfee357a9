# the paper's protocol at toy scale on TinyStories as GPT-2 tokens (compact vocabulary), with an AR row
# $ python prepare_owt.py --dataset=tinystories-valid --compact --out_dir=data/tinystories   # downloads the text once
# $ python ablate.py config/ablate_tinystories.py
# sizes and budgets: ablation-tinystories/README.md says how they were chosen (the whole command: about 100 minutes)

text = 'data/tinystories/TinyStories-valid.txt'
tokenizer = 'gpt2'
out_dir = 'out-ablation-tinystories'
n_layer = 4
n_head = 4
n_embd = 256                    # the quick start's depth and recipe at twice its width (ablation-tinystories/README.md)
learning_rate = 2e-3            # the quick start's
beta2 = 0.95                    # the diffusion runs' AdamW beta2: with BD3-LM's 0.999 the global pretrain stays on its unigram plateau (README here)
finetune_iters = 160            # F; P = 5.7 F = 912 iterations (1.9M tokens, 0.6 epochs of the training split)
judge_iters = 1300              # the judge: longer-trained than the AR row (P + F = 1072)
ar = True                       # the AR row
orders = ['random']             # the paper's sampler only: the budget goes to training
temperatures = {'random': [0.7, 0.8, 1.0, 1.2]}  # brackets real stories' entropy with room to spare (ablation-tinystories/README.md)
gammas = [0.25]                 # snapshot / posthoc / random at the paper's gamma only
seeds = [1337]                  # one training seed, to fit about 100 minutes; add 1338 for the second (17 more)
num_samples = 48                # per row (the character protocol: 64)
eval_iters = 16                 # validation batches per NELBO (the character protocol: 64)
