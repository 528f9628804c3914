"""Offline data sets: text (BBC or any file/folder) with a cached BPE, digits and MNIST-1D for a ViT, stroke
sketches (generated, or real QuickDraw files), seeded resumable batch samplers, and input corruptions for
robustness evaluation (`smoe.data.corrupt`). Nothing is downloaded."""

from smoe.data.batches import lm_batches, tensor_batches
from smoe.data.bbc import load_bbc
from smoe.data.sketch import generate_sketches, load_quickdraw
from smoe.data.text import TextCorpus, classification_tensors, get_tokenizer, lm_streams, load_text
from smoe.data.vision import load_digits, load_mnist1d, patchify, unpatchify

__all__ = [
    "TextCorpus",
    "classification_tensors",
    "generate_sketches",
    "get_tokenizer",
    "lm_batches",
    "lm_streams",
    "load_bbc",
    "load_digits",
    "load_mnist1d",
    "load_quickdraw",
    "load_text",
    "patchify",
    "tensor_batches",
    "unpatchify",
]
