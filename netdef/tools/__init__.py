"""Command-line tools beyond train/test/time, each registering a ``netdef`` subcommand.

- :mod:`netdef.tools.upgrade`: ``netdef upgrade net|solver IN OUT`` (Caffe's
  ``upgrade_net_proto_text`` / ``upgrade_solver_proto_text``).
- :mod:`netdef.tools.classify`: ``netdef classify --model --weights IMAGE...``
  (Caffe's ``classification`` example and pycaffe's ``classify.py``).
"""
