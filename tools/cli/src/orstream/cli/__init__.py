"""The ``orstream`` command: ``up``, ``token``, ``bench``."""
