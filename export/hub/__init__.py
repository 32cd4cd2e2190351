"""Folders other tools open: the compressed transformers model as a Hugging Face ``save_pretrained``
folder (``hf_folder``), the same folder laid out for sentence-transformers with its ONNX files under
the names that library's ONNX backend documents (``sentence_folder``), and the run's experiment
tracking in MLflow (``tracking``). transformers, sentence-transformers and mlflow load only when a
recipe asks for these."""
