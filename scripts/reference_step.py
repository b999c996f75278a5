"""Times the training step of the Lipschitz paper's own JAX code (Arongil/lipschitz-transformers).

Run by scripts/bench-vs-reference.sh inside its venv: python reference_step.py CHECKOUT STEPS. The
paper's Trainer, model, optimizer and data loader run unmodified at the config of
experiments/shakespeare_softcap.ron. Batches are drawn from the paper's loader before the clock
starts, so each timed interval (from one batch handed to the trainer to the next) is its pure
training step: gradient, Muon update, dualize and soft-cap projection. Logging and validation are
pushed past the last step. Prints one line per step and the median of the steps after compilation.
"""
import json
import os
import statistics
import sys
import time

checkout, steps = os.path.abspath(sys.argv[1]), int(sys.argv[2])
sys.path.insert(0, checkout)
os.chdir(checkout)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from configs import parse_config_from_json  # noqa: E402
from data_loaders import get_data_loader  # noqa: E402
from models import create_model  # noqa: E402
from optimizers import get_optimizer  # noqa: E402
from trainer import Trainer  # noqa: E402
from utils import Logger  # noqa: E402

# experiments/shakespeare_softcap.ron in the paper code's terms.
CONFIG = {
    "optimizer": "muon", "project": {"default": "soft_cap"}, "w_max": 1.2, "lr": 0.5,
    "beta1": 0.9, "beta2": 0.95, "wd": 0, "spectral_wd": 0,
    "d_embed": 256, "seq_len": 256, "num_blocks": 3, "num_heads": 4,
    "softmax_scale": 1, "final_scale": 1, "residual_scale": 1, "scales_learnable": False,
    "blocks_mass": 16, "layernorm_substitute": "none", "max_embed_inflation_factor": 16,
    "use_unembed": False, "model_dtype": "float32", "project_dtype": "float32",
    "zero_init": True, "sensitive_to_wmax": {"default": True},
    "data": "shakespeare", "vocab_size": 65, "model": "gpt", "randomize_labels": False,
    "val_iters": 20, "val_interval": 10**9, "batch_size": 64, "steps": steps,
    "accum_steps": 1, "pre_dualize": False, "post_dualize": True,
    "log_interval": 10**9, "schedule": "linear",
}


class TimedBatches:
    """The paper's loader's first `steps` batches, drawn in advance; records when each is taken."""

    def __init__(self, loader, steps):
        it = iter(loader)
        self.batches = [next(it) for _ in range(steps)]
        self.taken = []

    def __iter__(self):
        for batch in self.batches:
            self.taken.append(time.perf_counter())
            yield batch
        self.taken.append(time.perf_counter())


print("jax", jax.__version__, jax.devices(), "config", json.dumps(CONFIG, sort_keys=True), flush=True)
config = parse_config_from_json(CONFIG)
np.random.seed(0)
key = jax.random.PRNGKey(0)
train_loader, val_loader, loss_fn = get_data_loader(config)
batches = TimedBatches(train_loader, steps)
model = create_model(config)
model.jit()
optimizer = get_optimizer(config)
key, subkey = jax.random.split(key)
params = model.initialize(subkey)
opt_state = optimizer.init_state(params)
trainer = Trainer(model=model, optimizer=optimizer, train_loader=batches, val_loader=val_loader,
                  loss_fn=loss_fn, config=config, logger=Logger(config))
params, opt_state, key = trainer.train(params, opt_state, key)
jax.block_until_ready(params)
batches.taken[-1] = time.perf_counter()
seconds = [b - a for a, b in zip(batches.taken, batches.taken[1:])]
for i, s in enumerate(seconds):
    print(f"reference step {i + 1}: {s:.3f} s", flush=True)
# The first steps compile (the gradient, each optimizer and projection function).
steady = seconds[3:]
print(f"REFERENCE_MEDIAN_STEP_SECONDS {statistics.median(steady):.4f} over {len(steady)} steps")
