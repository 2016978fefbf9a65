"""The d2l RNN encoder-decoder on s2s_fused's modules: data, model, training, translation (``python -m s2s_fused
train`` / ``translate``)."""
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Vocab, load_corpus, preprocess, tokenize
from .errors import UserError
from .model import EagerMaskedSoftmaxCELoss, Seq2Seq, make_loss
from .translate import translate, translate_ids

__all__ = ["Seq2Seq", "Vocab", "UserError", "EagerMaskedSoftmaxCELoss", "load_checkpoint", "load_corpus",
           "make_loss", "preprocess", "save_checkpoint", "tokenize", "translate", "translate_ids"]
