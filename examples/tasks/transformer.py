"""A small Transformer encoder (Keras `MultiHeadAttention`) that learns to reverse a sequence.

Inputs are `SEQUENCE_LENGTH` random tokens; the target at each position is the token at the
mirrored position, so every output must attend to a far-away input. Two pre-norm encoder
blocks with learned position embeddings, trained with plain SGD at a learning rate high enough
that an unclipped step can throw the attention weights off: the choice of clipping shows in the
loss.

Run it: `python -m training --task examples/tasks/transformer.py --policy global_norm --steps 1000`
"""

from __future__ import annotations

import numpy as np

from clipwatch.tasks import Task

SEQUENCE_LENGTH = 12
VOCABULARY = 10
WIDTH = 32
HEADS = 4
BLOCKS = 2
SAMPLES = 8192


def make_reversal(seed: int, samples: int = SAMPLES):
    tokens = np.random.default_rng(seed).integers(0, VOCABULARY, size=(samples, SEQUENCE_LENGTH))
    return tokens.astype(np.int32), tokens[:, ::-1].astype(np.int32)


def make_validation_data(seed: int):
    return make_reversal(10_000 + seed, samples=1024)  # fresh sequences: generalisation


def build_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    tokens = keras.Input(shape=(SEQUENCE_LENGTH,), dtype="int32")
    positions = keras.ops.arange(SEQUENCE_LENGTH)
    hidden = keras.layers.Embedding(VOCABULARY, WIDTH, name="token_embedding")(tokens)
    hidden = hidden + keras.layers.Embedding(SEQUENCE_LENGTH, WIDTH, name="position_embedding")(positions)
    for block in range(BLOCKS):
        normed = keras.layers.LayerNormalization(name=f"block{block}_attention_norm")(hidden)
        attended = keras.layers.MultiHeadAttention(
            HEADS, WIDTH // HEADS, name=f"block{block}_attention"
        )(normed, normed)
        hidden = hidden + attended
        normed = keras.layers.LayerNormalization(name=f"block{block}_feedforward_norm")(hidden)
        expanded = keras.layers.Dense(2 * WIDTH, activation="relu", name=f"block{block}_expand")(normed)
        hidden = hidden + keras.layers.Dense(WIDTH, name=f"block{block}_project")(expanded)
    hidden = keras.layers.LayerNormalization(name="final_norm")(hidden)
    logits = keras.layers.Dense(VOCABULARY, name="logits")(hidden)
    return keras.Model(tokens, logits)


TASK = Task(
    name="transformer_reverse",
    description="Transformer encoder (MultiHeadAttention) reversing sequences, SGD lr 1",
    build_model=build_model,
    make_data=make_reversal,
    build_loss=lambda: __import__("keras").losses.SparseCategoricalCrossentropy(from_logits=True),
    optimizer="sgd",
    learning_rate=1.0,
    batch_size=64,
    clip_threshold=1.0,
    make_validation_data=make_validation_data,
    metrics=["accuracy"],
    evaluation_interval=250,
)
