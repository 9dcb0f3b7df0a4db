"""Clipwatch inside a user's own Keras script: `LiveClipping` wraps its optimizer (clipping after
tf.distribute's all-reduce), its callback records every step and obeys commands from the page."""
