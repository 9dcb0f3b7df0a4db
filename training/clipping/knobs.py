"""The layouts that cross the engine's boundary: the live knob vector and the per-step record.

Plain data, no TensorFlow: the command vocabulary (`commands`) and the run records read them
without building an engine.
"""

# The live knobs, in their order in the knob vector.
KNOBS = ("clip_threshold", "percentile", "clip_factor", "z_threshold", "policy", "spike", "stop")
KNOB = {name: index for index, name in enumerate(KNOBS)}

# One step's record, in order: what the trainer buffers per step and LiveClipping's ring holds.
STEP_RECORD = ("loss", "grad_norm", "clipped_grad_norm", "clip_threshold", "clipped", "finite")
