"""Data for pretraining: raw text -> token shards (corpus.py, shards.py) -> NSP/SOP examples and
dynamic masking (pretraining.py).

Shard layout (one directory per split, `DIR/train` and `DIR/valid`, plus `DIR/meta.json` and the
tokenizer in `DIR/tokenizer`): each shard `shard-NNNNN/` holds
    tokens.npy      uint16 (or uint32 for vocabularies over 65535) token ids, all sentences back to back
    word_starts.npy uint8, 1 where a token begins a word (for whole-word masking), same length
    sentences.npy   int64, start offset of every sentence in tokens, plus the end (n_sentences + 1)
    documents.npy   int64, index of the first sentence of every document, plus the end (n_documents + 1)
read back memory-mapped, so training never re-tokenizes and never holds the corpus in memory.
"""
