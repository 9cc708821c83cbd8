"""The closed-loop labs: one task description per lab, one record -> train -> evaluate -> report machinery for all.

A lab task is a `LabTask` (task.py): its robot type and spec, control rate, action width, what a waiting arm does,
the name of its fixture's tiny configuration (`xr0.tiny_model.TINY_CONFIGURATIONS`) and the file its datasets and
fixtures record themselves in. The lab's own package holds the rest of the description (the world, its scripted
expert and instructions: `xr0.planar_reach.env`, `xr0.meta_world.env`) and its commands, written on:

- record.py: the LeRobot v3.0 writer of the lab's robot type, the dataset's summary of how it was recorded;
- evaluate.py: a policy episode on the simulated clock with its seeded requests, the execution settings' checks,
  success with its 95% Wilson interval (`xr0_client.evaluation`), the checkpoint's training record, loading;
- train.py: a fixture's base checkpoint from its named configuration, xr0-finetune runs, the dataset's check,
  packing a result into `fixtures/`;
- report.py: a report's runs in worker processes of one torch thread each, GIFs.

A lab's modules import these (`from ..labs import evaluate as closed_loop`); nothing here imports a lab, and
nothing here imports torch at import time, so the labs' commands print `--help` at once.
"""
