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
