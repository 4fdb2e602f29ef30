"""Tokenizers, one module per kind: ``gpt2`` (tiktoken, offline), ``bpe`` (readable, trainable),
``gpt2_files`` (GPT-2's verified files), ``chars`` (characters). ``tinygpt.tokenizer`` gathers
them under one name."""
