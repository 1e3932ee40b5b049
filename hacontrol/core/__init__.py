"""The pure decision core of hacontrol.

Nothing in this package performs I/O, starts threads, sleeps or reads a clock:
every function takes what it needs (an :class:`~hacontrol.core.model.Observation`,
the current monotonic time ``now`` and the :class:`~hacontrol.core.timing.Timing`)
and returns data. ``tests/unit/test_core_purity.py`` holds it to that by checking
the imports of every module here.

The only consumer of :func:`~hacontrol.core.decide.decide` in production is
``hacontrol.agent.loop``; the hypothesis model in ``tests/unit/test_model_*``
is the other one.
"""
