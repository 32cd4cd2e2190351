"""Tiny architectures built in code, with matching data, for every test that needs a model.

``TINY_ARCHS`` maps a name to (model factory, data factory); each data factory returns
``TaskData`` whose eval batches are ``(inputs, labels)`` for that model.
"""

import torch
import torch.nn.functional as F
from torch import nn

from compress.models.data import TaskData


class MLP(nn.Module):
    def __init__(self, features=12, hidden=32, classes=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(features, hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class ResidualCNN(nn.Module):
    def __init__(self, channels=8, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.bn(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class DepthwiseSeparableCNN(nn.Module):
    """MobileNet-style blocks: depthwise 3x3 then pointwise 1x1, with BN."""

    def __init__(self, channels=16, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn_dw = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels * 2, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(channels * 2)
        self.head = nn.Linear(channels * 2, classes)

    def forward(self, x):
        x = F.relu(self.bn_dw(self.depthwise(self.stem(x))))
        return self.head(F.relu(self.bn_pw(self.pointwise(x))).mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """Two pre-norm encoder blocks on token ids with an attention mask (keyword inputs, like HF)."""

    def __init__(self, vocab=50, dim=16, heads=2, blocks=2, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(blocks)
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        pad = attention_mask == 0
        for block in self.blocks:
            x = block(x, src_key_padding_mask=pad)
        weights = attention_mask.unsqueeze(-1).float()
        return self.head((x * weights).sum(1) / weights.sum(1))


def tiny_bert_encoder():
    """A 2-layer BERT (random weights) with mean pooling, as the MiniLM workload is built."""
    from transformers import BertConfig, BertModel

    from compress.models.hf import SentenceEncoder

    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return SentenceEncoder(BertModel(config, add_pooling_layer=False))


def tiny_vit_classifier():
    """A 2-layer ViT classifier (random weights) on 1x8x8 images, 4x4 patches."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=4,
    )
    return ViTForImageClassification(config)


def tiny_gpt2_classifier():
    """A 2-layer GPT-2 (random weights; fused q/k/v in Conv1D layers) classifying from its last token."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=50,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        use_cache=False,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return GPT2ForSequenceClassification(config)


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def image_data(batches=3, batch_size=8, classes=4):
    g = _seeded(0)
    data = [(torch.randn(batch_size, 1, 8, 8, generator=g), torch.randint(0, classes, (batch_size,), generator=g))]
    data += [
        (torch.randn(batch_size, 1, 8, 8, generator=g), torch.randint(0, classes, (batch_size,), generator=g))
        for _ in range(batches - 1)
    ]
    return TaskData(eval=data, train=data, calibration=data[:1])


def vector_data(batches=3, batch_size=8, features=12, classes=4):
    g = _seeded(1)
    data = [
        (torch.randn(batch_size, features, generator=g), torch.randint(0, classes, (batch_size,), generator=g))
        for _ in range(batches)
    ]
    return TaskData(eval=data, train=data, calibration=data[:1])


def token_data(batches=3, batch_size=4, length=7, vocab=50, classes=3):
    g = _seeded(2)
    data = []
    for _ in range(batches):
        ids = torch.randint(2, vocab, (batch_size, length), generator=g)  # 0: padding, 1: bos/eos
        mask = torch.ones(batch_size, length, dtype=torch.long)
        mask[0, -2:] = 0
        data.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (batch_size,), generator=g)))
    return TaskData(eval=data, train=data, calibration=data[:1])


def seeded(factory, seed=0):
    """A factory building the model with fixed weights; BatchNorm gets trained-looking statistics."""

    def build(**kwargs):
        torch.manual_seed(seed)
        model = factory(**kwargs)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
        return model.eval()

    return build


mlp = seeded(MLP)
residual_cnn = seeded(ResidualCNN)
depthwise_cnn = seeded(DepthwiseSeparableCNN)
tiny_transformer = seeded(TinyTransformer)
tiny_bert = seeded(tiny_bert_encoder)
tiny_vit = seeded(tiny_vit_classifier)
tiny_gpt2 = seeded(tiny_gpt2_classifier)

TINY_ARCHS = {
    "mlp": (mlp, vector_data),
    "residual_cnn": (residual_cnn, image_data),
    "depthwise_cnn": (depthwise_cnn, image_data),
    "tiny_transformer": (tiny_transformer, token_data),
    "tiny_bert": (tiny_bert, token_data),
    "tiny_vit": (tiny_vit, image_data),
    "tiny_gpt2": (tiny_gpt2, token_data),
}


WORDS = "a the cat dog sat on mat ran far and fast slow red blue big small house tree bird sings loud quiet".split()
SENTENCES = [
    "the cat sat on the mat",
    "a dog ran far and fast",
    "the red bird sings loud",
    "a big blue house",
    "the small tree is quiet",
    "a slow cat and a fast dog",
]


def tiny_tokenizer():
    """A BERT word-piece tokenizer over ``WORDS``, built in code (no download)."""
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)


def tiny_minilm(vocab_size: int):
    """A MiniLM-shaped sentence encoder (BERT blocks, mean pooling, no pooler), random weights, seeded."""
    from transformers import BertConfig, BertModel

    from compress.models.hf import SentenceEncoder

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config._attn_implementation = "eager"  # as compress.models.hf.sentence_encoder loads all-MiniLM-L6-v2
    return SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def sentence_data(tokenizer, batch_size: int = 3) -> TaskData:
    """``SENTENCES`` tokenized into ``(inputs, label)`` batches, the tokenizer kept with them."""
    batches = []
    for start in range(0, len(SENTENCES), batch_size):
        encoded = tokenizer(SENTENCES[start : start + batch_size], padding=True, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        batches.append((inputs, torch.zeros(len(SENTENCES[start : start + batch_size]))))
    return TaskData(eval=batches, train=batches, calibration=batches[:1], tokenizer=tokenizer)
