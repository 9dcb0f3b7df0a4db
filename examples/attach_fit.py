"""A plain `model.fit` script with Clipwatch attached: two lines (marked `# Clipwatch`).

    python examples/attach_fit.py --steps 2000

While it runs, open `streamlit run app.py`, pick the run in Live, and steer its threshold.
"""

from __future__ import annotations

import keras

from common import moons_dataset, parse_arguments, report, small_model
from clipwatch.keras import LiveClipping


def main(argv=None) -> None:
    args = parse_arguments(__doc__.splitlines()[0], argv)
    model = small_model()
    clipping = LiveClipping(policy=args.policy, clip_threshold=args.clip_threshold,  # Clipwatch
                            database=args.db, run_name=args.run_name or "attach_fit example")
    model.compile(
        optimizer=clipping.wrap(keras.optimizers.Adam(1e-2)),  # Clipwatch
        loss="binary_crossentropy",
        steps_per_execution=args.steps_per_execution,
    )
    model.fit(moons_dataset(), epochs=1, steps_per_epoch=args.steps, verbose=0,
              callbacks=[clipping.callback()])  # Clipwatch
    report(clipping, model, args.json)


if __name__ == "__main__":
    main()
