"""The inference core: load the network(s) once, predict, post-process. No Lightning, no Hydra.

* :mod:`.engine`: THE predictor interface (:class:`~.engine.Inferencer`, torch-free) and THE factory
  (:func:`~.engine.load_predictor`) choosing the engine: torch (:mod:`.predictor`) or ONNX Runtime (:mod:`.ort_predictor`)
* :mod:`.predictor`: :class:`~.predictor.Predictor` (checkpoints, ONNX, int8), ``predict_batch``, ``load_nets``
* :mod:`.tta`: test-time augmentation (torch-free)
* :mod:`.folder`: a folder of images -> a submission csv (and an evaluation with labels), for any engine
* :mod:`.calibrate`: labelled predictions -> the counts threshold tuning needs
* :mod:`.onnx_model`: torch-free ONNX metadata and THE ONNX Runtime session wrapper (:class:`~.onnx_model.OrtModel`)
* :mod:`.onnx_net`: :class:`~.onnx_net.OnnxNet`, an OrtModel behind a ``torch.nn.Module``
* :mod:`.ort_predictor`: :class:`~.ort_predictor.OrtPredictor`, torch-free prediction (numpy + OpenCV)

Importing this package imports nothing heavy: the torch-free modules stay torch-free.
"""
