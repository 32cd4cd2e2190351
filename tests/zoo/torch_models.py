"""Zoo rows written in plain torch, as users write them (family ``torch-text``): their classes and fields."""

import torch


class EncoderClassifier(torch.nn.Module):
    """A torch.nn.TransformerEncoder classifier: the default nested-tensor fast path, a padding mask."""

    def __init__(self, vocab: int = 64, width: int = 32, heads: int = 4, classes: int = 3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        layer = torch.nn.TransformerEncoderLayer(width, heads, 2 * width, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2)  # enable_nested_tensor defaults to True
        self.head = torch.nn.Linear(width, classes)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        return self.head(hidden.mean(1))


class RnnClassifier(torch.nn.Module):
    """An RNN (two-layer bidirectional LSTM by default) over embeddings, then an MLP head."""

    def __init__(self, vocab: int = 64, rnn: str = "LSTM", layers: int = 2, bidirectional: bool = True):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 16)
        self.rnn = getattr(torch.nn, rnn)(16, 32, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.hidden = torch.nn.Linear(64 if bidirectional else 32, 32)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, input_ids, attention_mask=None):
        out, _ = self.rnn(self.embed(input_ids))
        return self.head(torch.relu(self.hidden(out[:, -1])))
