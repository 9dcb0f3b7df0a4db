"""The clipping engine: the policies, the compiled core both drivers call, and the commands.

* `policies`: small, pure TensorFlow policies with one call shape, and their registry.
* `engine`: the live knobs, every policy's state and one step's clip (`ClipEngine`), and the
  training state a run is made of (`TrainingState`).
* `commands`: the command vocabulary and how a command changes the engine.
"""
