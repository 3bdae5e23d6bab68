"""Applying a trained run: predictions, calibration, heat-maps and ONNX export.

One job per module, importing only from the layers below (never :mod:`ssfilter.api`):

* :mod:`~ssfilter.inference.run`: load a run folder (config, model, calibration, data root);
* :mod:`~ssfilter.inference.calibration`: the :class:`Calibration` record and its JSON file (torch-free);
  :mod:`~ssfilter.inference.calibration_rules`: how thresholds are chosen (robust, labelled F1-max);
* :mod:`~ssfilter.inference.predictor`: the model on image files (maps, scores, decisions);
  :mod:`~ssfilter.inference.inputs`: files, folders and globs to image files;
  :mod:`~ssfilter.inference.outputs`: the ``predict`` output folder;
  :mod:`~ssfilter.inference.prediction`, :mod:`~ssfilter.inference.regions` and
  :mod:`~ssfilter.inference.visualize`: one image's result (its JSON record), its defect regions and
  its heat-map and mask (torch-free);
* :mod:`~ssfilter.inference.export`: ONNX export, with :mod:`~ssfilter.inference.graph` (the exported
  computation) and :mod:`~ssfilter.inference.parity` (the runtime vs PyTorch gate);
  :mod:`~ssfilter.inference.openvino_export`: OpenVINO IR export through the same graph and gate;
  :mod:`~ssfilter.inference.formats`: the registry of export formats (torch-free, for the CLI);
* :mod:`~ssfilter.inference.onnx_predictor`: running an export without torch, over a runtime of
  :mod:`~ssfilter.inference.runtimes` (ONNX Runtime, OpenVINO; chosen by file suffix).
* :mod:`~ssfilter.inference.backends`: the models ``ssfilter serve`` can run (a registry);
  :mod:`~ssfilter.inference.server`: the HTTP server and its page (``static/``).
"""
