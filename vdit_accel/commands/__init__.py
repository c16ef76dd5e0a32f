"""The outer layer: the ``vdit-accel`` subcommands and the helpers they share.

* :mod:`.generate`, :mod:`.search`, :mod:`.vbench`, :mod:`.demo`  one module per subcommand (``HELP``,
  ``add_arguments(parser)``, ``run(args)``); :mod:`vdit_accel.cli` is their registry.
* :mod:`.compare`  dense vs accelerated generation with timings and quality metrics (CLI, demo, benchmarks).
* :mod:`.loading`  ``--model`` to a pipeline (bundled model, tiny test pipelines, folder, hub id).
* :mod:`.prompts`  prompt files (a JSON list or one prompt per line).
* :mod:`.reports`  text and plot reports of channel-level score reuse.
* :mod:`.parallel` the command-line side of ``--parallel`` (``run_cli`` under ``torchrun``).

The engines stay beside the core (:mod:`vdit_accel.search`, :mod:`vdit_accel.quality`, :mod:`vdit_accel.app`).
The core (api, config, schedule, cost, runtime, methods, adapters, kernels) never imports this package.
"""
