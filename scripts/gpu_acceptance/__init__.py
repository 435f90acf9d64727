"""scripts/gpu_check.py's parts: :mod:`.records` (records, command runner, report), :mod:`.steps` (the
steps and their limits), :mod:`.parse` (reading the commands' output), :mod:`.probes` (jobs run in a
subprocess)."""
