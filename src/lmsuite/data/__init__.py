"""Training data: documents, tokenizer, Megatron .bin/.idx files, dedup and training order."""

from lmsuite.data.order import batch_at, batch_documents

__all__ = ["batch_at", "batch_documents"]
