"""Training data: documents, tokenizer, Megatron .bin/.idx files, dedup and training order."""
