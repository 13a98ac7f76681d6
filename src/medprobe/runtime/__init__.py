"""What every torch stage runs on: device and precision (device.py), DataLoader workers and quiet interrupts
(workers.py), whether this process is a torchrun rank (world.py, torch-free). Below extract and finetune,
which both use it and never each other."""
