"""Numeric tolerances of the test suite, kept in one table."""

# fp32 ONNX Runtime vs torch, largest absolute output difference.
FP32_EXPORT_ATOL = {
    "mlp": 1e-5,
    "residual_cnn": 1e-4,
    "depthwise_cnn": 1e-4,
    "tiny_transformer": 1e-4,
    "tiny_bert": 1e-4,
    "tiny_vit": 1e-4,
    "tiny_gpt2": 1e-4,
}

# int4 weight-only vs fp32 outputs in ONNX Runtime, SQNR in dB, per ONNX Runtime algorithm: a tiny BERT's
# 12 weight matmuls in blocks of 16 (measured 54.2 default/rtn/gptq, 54.5 k_quant, 55.7 hqq), and one
# random 32x16 layer after a float one (measured 23.0, 22.3 k_quant, 26.2 hqq).
INT4_SQNR_DB = {"default": 52.0, "rtn": 52.0, "k_quant": 52.0, "hqq": 53.0, "gptq": 52.0, "block_minimum": 52.0}
INT4_ONE_LAYER_SQNR_DB = {
    "default": 21.0,
    "rtn": 21.0,
    "k_quant": 20.5,
    "hqq": 24.0,
    "gptq": 21.0,
    "block_minimum": 22.0,
}
