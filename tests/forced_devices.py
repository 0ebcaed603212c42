"""Run by tests/test_devices.py in a subprocess of its own, as CPU devices can be forced only before JAX is imported:
`python3 forced_devices.py RESULT_JSON FOLDER` forces 4 CPU devices, then runs the debug config's 4 seeds
- on 1 device (today's program), and on 4 devices to env step 150 (training from step 100 on) with a checkpoint
  resumed on 2 devices to the end (200);
- and asks a 4-device placement to take 3 seeds;
and writes every run's records (without the measured steps per second) and the refusal's sentence to RESULT_JSON."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from output_records import records_without_timing  # noqa: E402  (this folder: the script's own)

from environments import environment_from_config, seed_environments  # noqa: E402
from experiment import runner  # noqa: E402
from experiment.config import ConfigError, config_to_dict, load_config  # noqa: E402
from initialization import make_agent  # noqa: E402
from runtime import (
    checkpoint,  # noqa: E402
    devices,  # noqa: E402
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = ["num_seeds=4", "update_seed_batch=1"]  # one seed's update at a time: the same arithmetic everywhere


def main(result_path, folder):
    config = load_config(os.path.join(ROOT, "configs", "debug.json"), SEEDS)
    env = environment_from_config(config)
    result = {"devices": len(jax.devices())}

    def run(name, num_devices, cfg=config, file=None, **kwargs):
        output = os.path.join(folder, f"{file or name}.out")
        runner.run(cfg, env, 0, output, progress=False, placement=devices.Placement(jax.devices()[:num_devices]),
                   **kwargs)
        result[name] = records_without_timing(output)

    run("one_device", 1)
    first_part = load_config(os.path.join(ROOT, "configs", "debug.json"), SEEDS + ["num_steps=150"])
    saved = os.path.join(folder, "sharded.ckpt")
    run("first_part", 4, first_part, save_checkpoint=saved)
    expected = runner.state_shapes(config, make_agent(config, env), seed_environments(env, range(4), True))
    resume = checkpoint.prepare_resume(saved, config_to_dict(config), expected, None, config.num_steps,
                                       os.path.join(folder, "first_part.out"))
    run("four_then_two_devices", 2, file="first_part", resume=resume)  # continues the first part's file
    try:
        devices.Placement(jax.devices()).check(load_config(os.path.join(ROOT, "configs", "debug.json"),
                                                           ["num_seeds=3"]))
    except ConfigError as error:
        result["refused"] = str(error)
    with open(result_path, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
