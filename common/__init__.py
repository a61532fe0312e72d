"""The floor every layer may stand on: error types and their one-line form (``errors``), and the
worker half of the secrets hand-over (``credentials``). It imports nothing of the project:
``trainers/``, ``search_spaces/`` and the driver (``lorasweep/``) all import it, never the reverse."""
