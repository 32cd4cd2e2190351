"""The zoo: tiny architectures built from ``transformers`` configs with random weights.

One row per architecture: family, config class and the fields that make it tiny. Families
say which inputs to feed; nothing here is a per-model option of the pass. Sizes are the
smallest that keep each architecture's structure (2 layers, 2-4 heads, 32x32 images, 8 tokens).
"""

TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXT_POS = dict(TEXT, max_position_embeddings=32)
VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2)
VISION = dict(VISION, num_attention_heads=4, intermediate_size=64)
DECODER = dict(TEXT_POS, use_cache=False, pad_token_id=0)
SEQ2SEQ = dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4)
SEQ2SEQ = dict(SEQ2SEQ, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)

# name: (family, config class, config fields)
ZOO = {
    "bert": ("encoder", "BertConfig", TEXT_POS),
    "distilbert": ("encoder", "DistilBertConfig", dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64)),
    "roberta": ("encoder", "RobertaConfig", dict(TEXT_POS, pad_token_id=1)),
    "albert": ("encoder", "AlbertConfig", dict(TEXT_POS, embedding_size=16)),
    "electra": ("encoder", "ElectraConfig", dict(TEXT_POS, embedding_size=16)),
    "deberta-v2": ("encoder", "DebertaV2Config", dict(TEXT_POS, relative_attention=True, position_buckets=8)),
    "mpnet": ("encoder", "MPNetConfig", TEXT_POS),
    "xlm-roberta": ("encoder", "XLMRobertaConfig", dict(TEXT_POS, pad_token_id=1)),
    "vit": ("vision", "ViTConfig", VISION),
    "deit": ("vision", "DeiTConfig", VISION),
    "beit": ("vision", "BeitConfig", dict(VISION, use_relative_position_bias=True)),
    "swin": (
        "vision",
        "SwinConfig",
        dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    ),
    "resnet": ("cnn", "ResNetConfig", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])),
    "mobilenet-v2": ("cnn", "MobileNetV2Config", dict(image_size=32, depth_multiplier=0.35)),
    "convnext": ("cnn", "ConvNextConfig", dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)),
    "regnet": ("cnn", "RegNetConfig", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8)),
    "efficientnet": (
        "cnn",
        "EfficientNetConfig",
        dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320),
    ),
    "gpt2": (
        "decoder",
        "GPT2Config",
        dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=64, use_cache=False),
    ),
    "llama": ("decoder", "LlamaConfig", dict(DECODER, num_key_value_heads=2)),
    "qwen2": ("decoder", "Qwen2Config", dict(DECODER, num_key_value_heads=2)),
    "gpt-neox": ("decoder", "GPTNeoXConfig", dict(DECODER)),
    # held-out decoders (issue 28): separate q/k/v (Mistral, Gemma2, OPT) and fused ones (Phi3's qkv_proj
    # and gate_up_proj, BLOOM's and Falcon's query_key_value)
    "mistral": ("decoder", "MistralConfig", dict(DECODER, num_key_value_heads=2)),
    "gemma2": ("decoder", "Gemma2Config", dict(DECODER, num_key_value_heads=2, head_dim=8)),
    "opt": ("decoder", "OPTConfig", dict(DECODER, ffn_dim=64, word_embed_proj_dim=32)),
    "phi3": ("decoder", "Phi3Config", dict(DECODER, num_key_value_heads=2)),
    "bloom": ("decoder", "BloomConfig", dict(vocab_size=64, hidden_size=32, n_layer=2, n_head=4, use_cache=False)),
    "falcon": ("decoder", "FalconConfig", dict(DECODER)),
    "bart": (
        "seq2seq",
        "BartConfig",
        dict(SEQ2SEQ, max_position_embeddings=32, use_cache=False, pad_token_id=1, decoder_start_token_id=2),
    ),
    "clip-vision": ("vision", "CLIPVisionConfig", dict(VISION)),  # pre- and post-LayerNorm around the encoder
    "levit": (
        "vision",
        "LevitConfig",
        dict(
            image_size=32,
            patch_size=16,
            hidden_sizes=[32, 64],
            num_attention_heads=[2, 4],
            depths=[1, 1],
            key_dim=[8, 8],
            attention_ratio=[2, 2],
            mlp_ratio=[2, 2],
            down_ops=[["Subsample", 8, 4, 4, 2, 2]],
        ),
    ),  # fmt: skip
    "wav2vec2": (  # the positional conv is weight-norm parametrized
        "audio",
        "Wav2Vec2Config",
        dict(
            vocab_size=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            conv_dim=(16, 16),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),  # fmt: skip
    "whisper-encoder": (  # the positional table is added to the activations as a tensor
        "audio",
        "WhisperConfig",
        dict(
            SEQ2SEQ,
            num_mel_bins=8,
            max_source_positions=16,
            max_target_positions=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        ),
    ),  # fmt: skip
    "transformer-encoder": ("torch-text", "EncoderClassifier", {}),  # tests/zoo/torch_models.py
    "lstm": ("torch-text", "RnnClassifier", {}),
    "segformer": (
        "vision",
        "SegformerConfig",
        dict(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            num_attention_heads=[2, 4],
            patch_sizes=[7, 3],
            strides=[4, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=32,
        ),
    ),  # fmt: skip
    "t5": (
        "seq2seq",
        "T5Config",
        dict(
            vocab_size=64,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            use_cache=False,
        ),
    ),
}

# Families whose models have attention: the generic run also removes a quarter of their heads.
ATTENTION_FAMILIES = {"encoder", "vision", "decoder", "seq2seq", "audio"}


def build(name: str):
    """The architecture ``name`` with seeded random weights, in eval mode."""
    import torch
    import transformers

    family, config_class, fields = ZOO[name]
    torch.manual_seed(0)
    if family == "torch-text":
        from tests.zoo import torch_models

        return getattr(torch_models, config_class)(**fields).eval()
    config = getattr(transformers, config_class)(**fields)
    model = transformers.AutoModel.from_config(config)
    if family == "audio" and config.is_encoder_decoder:  # Whisper: its encoder, as an audio classifier uses it
        model = model.get_encoder()
    _settle_batchnorm(model, example_inputs(name))
    return model.eval()


def _settle_batchnorm(model, inputs, passes: int = 4) -> None:
    """Give every BatchNorm the scale and running statistics a trained model has.

    Fresh BatchNorm layers hold mean 0 / variance 1 whatever their input is, and some Hugging
    Face inits draw their scales from N(0, 0.02) like a Linear's (EfficientNet); through a deep
    random CNN (MobileNetV2, EfficientNet) activations then shrink layer by layer to ~1e-35,
    and the int8 check compares underflow. PyTorch's own BatchNorm init (scale 1, shift 0) and
    a few seeded forward passes in train mode (cumulative averages, no gradients) give unit-scale
    activations, as in a trained network. Done for every model that has BatchNorm, whatever its
    family: a property of the zoo, not an option of any row (a scale-free criterion cannot help:
    int8 cannot represent activations near 1e-35 at all).
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or not isinstance(inputs, torch.Tensor):
        return
    g = torch.Generator().manual_seed(2)
    momenta = [norm.momentum for norm in norms]
    model.train()
    for norm in norms:
        norm.reset_parameters()  # scale 1, shift 0, statistics reset
        norm.momentum = None  # cumulative average over the passes
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(inputs.shape, generator=g))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def example_inputs(name: str):
    import torch

    family = ZOO[name][0]
    g = torch.Generator().manual_seed(1)
    if family in ("vision", "cnn"):
        return torch.randn(2, 3, 32, 32, generator=g)
    if family == "audio":  # log-mel features (Whisper) or a raw waveform (Wav2Vec2)
        fields = ZOO[name][2]
        if "num_mel_bins" in fields:
            return torch.randn(2, fields["num_mel_bins"], 2 * fields["max_source_positions"], generator=g)
        return torch.randn(2, 400, generator=g)
    ids = torch.randint(2, 64, (2, 8), generator=g)
    if family == "torch-text":  # the second row padded: the mask matters
        return {"input_ids": ids, "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}
    if family == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    return {"input_ids": ids}
