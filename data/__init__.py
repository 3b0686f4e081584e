"""Corpora, tokenizer and the LightningDataModule."""

from .corpus import Document, file_documents, hub_documents, stdlib_documents
from .datamodule import HizooDataModule
from .tokenizer import train_or_load_tokenizer

__all__ = ["Document", "HizooDataModule", "file_documents", "hub_documents", "stdlib_documents", "train_or_load_tokenizer"]
