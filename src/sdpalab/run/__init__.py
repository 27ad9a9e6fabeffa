"""The run engine: a trial on this process (``trial``, ``model_trial``), isolated worker
processes (``worker``), the scheduler that feeds them and classifies what comes back
(``executor``), and the run directory, the only reader and writer of a run's files
(``rundir``). The worker imports ``sdpalab.run.worker``: this package imports nothing."""
