# any length, stopping at the end: the quick start's model and training (read that config first) on WebText
# excerpts as characters, where every document ends in <|endoftext|>, so the model learns where text stops
# $ curl -fLo webtext.test.jsonl https://raw.githubusercontent.com/Isinlor/AdversarialDecoder/2aaaf1fc62f5e3f1b4f43d09a04f69ac521544cc/data/webtext.test.jsonl
# $ python prepare_owt.py --input webtext.test.jsonl --tokenizer=char --out_dir=data/webtext_char
# $ python train.py config/train_shakespeare_char.py config/train_webtext_char.py
# $ python sample.py --out_dir=out-webtext-char --max_len=1024 --stop_at_eos=True --num_samples=16 --batch_size=16 --order=random --top_p=1.0

out_dir = 'out-webtext-char'
dataset = 'webtext_char'
