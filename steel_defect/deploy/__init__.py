"""Deployment: ONNX export (:mod:`.onnx_export`), int8 quantisation (:mod:`.quantize`), the offline Kaggle
bundle (:mod:`.kaggle`) and the inspection service (:mod:`.serve`)."""
