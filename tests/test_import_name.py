"""The package is `clipwatch` once installed, and `training` in the checkout: one set of modules.

A user's project often has its own `training.py` or `training/`: installed, Clipwatch must not
be shadowed by it (nor shadow it), and in the app's process a plug-in that imports `clipwatch`
must get the very classes the app uses.
"""

import os
import shutil
import subprocess
import sys
import textwrap

from support import REPO


def test_clipwatch_and_training_are_one_set_of_modules_in_the_checkout():
    import training
    import training.keras
    import training.persistence
    import training.plugins

    import clipwatch
    import clipwatch.keras
    from clipwatch.persistence import RunDatabase
    from clipwatch.plugins import load_task
    from clipwatch.tasks import Task

    assert clipwatch is training and clipwatch.Trainer is training.Trainer
    assert clipwatch.keras.LiveClipping is training.keras.LiveClipping
    assert RunDatabase is training.persistence.RunDatabase and load_task is training.plugins.load_task
    assert Task is training.tasks.Task
    # The module keeps the name it ran under: relative imports inside it stay consistent.
    assert clipwatch.keras.__spec__.name == clipwatch.keras.__name__ == "training.attach.live_clipping"
    # The old flat paths are the modules in their new homes, not copies.
    import training.trainer as flat_trainer
    from training.attach import live_clipping
    from training.loop import trainer

    assert training.keras is live_clipping and flat_trainer is trainer is sys.modules["training.trainer"]


USER_SCRIPT = """
import numpy as np
import keras
import training  # the user's own
assert training.USER == "package", training
from clipwatch.keras import LiveClipping
import clipwatch

assert clipwatch.__name__ == "clipwatch" and "site" not in clipwatch.__name__
keras.utils.set_random_seed(0)  # the initial weights: whether a step clips must not be chance
x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
y = x.sum(axis=1, keepdims=True)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
clipping = LiveClipping(policy="global_norm", clip_threshold=0.05, database=False)
model.compile(optimizer=clipping.wrap("sgd"), loss="mse")
model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), verbose=0, callbacks=[clipping.callback()])
metrics = clipping.metrics()
print("steps", len(metrics), "clipped", int(metrics.clipped.sum()), "module", type(clipping).__module__)
"""


def test_an_installed_clipwatch_attaches_from_a_folder_with_its_own_training(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(os.path.join(REPO, "pyproject.toml"), source)
    shutil.copytree(os.path.join(REPO, "training"), source / "training",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    installed = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(installed), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert (installed / "clipwatch" / "attach" / "live_clipping.py").exists()
    assert not (installed / "training").exists()  # the install never claims the name `training`

    project = tmp_path / "project"
    (project / "training").mkdir(parents=True)
    (project / "training" / "__init__.py").write_text('USER = "package"\n')
    (project / "training.py").write_text('USER = "module"\n')
    (project / "fit.py").write_text(textwrap.dedent(USER_SCRIPT))
    environment = {**os.environ, "PYTHONPATH": str(installed), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "fit.py"], cwd=project, env=environment,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    words = run.stdout.split()
    assert words[words.index("steps") + 1] == "8", run.stdout  # 2 epochs of 4 batches
    assert int(words[words.index("clipped") + 1]) > 0, run.stdout
    assert words[words.index("module") + 1] == "clipwatch.attach.live_clipping", run.stdout
