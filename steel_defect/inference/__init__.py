"""The inference core: load the network(s) once, predict, post-process. No Lightning, no Hydra.

* :mod:`.predictor`: :class:`~.predictor.Predictor` (checkpoints, ONNX, int8), ``predict_batch``, ``load_nets``
* :mod:`.tta`: test-time augmentation (torch-free)
* :mod:`.folder`: a folder of images -> a submission csv (and an evaluation with labels)
* :mod:`.calibrate`: labelled predictions -> the counts threshold tuning needs
* :mod:`.onnx_model`: torch-free ONNX metadata and an ONNX Runtime session (:class:`~.onnx_model.OrtModel`)
* :mod:`.onnx_net`: :class:`~.onnx_net.OnnxNet`, an ONNX model behind a ``torch.nn.Module``
* :mod:`.ort_predictor`: :class:`~.ort_predictor.OrtPredictor`, torch-free prediction (numpy + OpenCV)

Importing this package imports nothing heavy: the torch-free modules stay torch-free.
"""
