"""The fish's data: personas (who the model is), memory chats, chats and token arrays, the tokenizer, `guppy-data`.

    persona.py       persona files: topics, prompts, reply parts, word pools
    memory_chats.py  multi-turn chats where the user tells the fish something and asks it back
    dataset.py       chats, the train/eval split, token arrays on disk, batching (DataConfig, load_dataset)
    tokenizer.py     byte-level BPE and the chat template (ChatTokenizer)
    cli.py           `guppy-data`
"""
