"""The ``netdef`` commands, one module each; each registers its sub-parser (``add_parser``) and
calls a public library function, so every command is one Python call too.

- :mod:`netdef.tools.train`: ``netdef train`` -> :func:`~netdef.tools.train.train` (Caffe's ``caffe train``).
- :mod:`netdef.tools.score`: ``netdef test`` -> :func:`~netdef.tools.score.score` (``caffe test``).
- :mod:`netdef.tools.timing`: ``netdef time`` -> :func:`~netdef.tools.timing.time_net` (``caffe time``).
- :mod:`netdef.tools.upgrade`: ``netdef upgrade net|solver IN OUT`` -> :func:`~netdef.tools.upgrade.upgrade_file`
  (Caffe's ``upgrade_net_proto_text`` / ``upgrade_solver_proto_text``).
- :mod:`netdef.tools.classify`: ``netdef classify --model --weights IMAGE...`` ->
  :func:`~netdef.tools.classify.classify_files` (Caffe's ``classification`` example and pycaffe's ``classify.py``).
- :mod:`netdef.tools.common`: device selection and the options the commands share.
"""
