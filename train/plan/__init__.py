"""Will it fit, how fast, what will it cost: the planner behind `python -m train.plan` (memory per device, step
time, tokens/s, GPU-hours and cost of a job), built from the same config the job runs with."""
