"""Writing options with a loaded model: the engine interface and the local engine (sampling, caches, scoring, beams).

Pure Python and torch: imports nothing from web/, hosting/, serving/, accel/, config or Flask.
"""
