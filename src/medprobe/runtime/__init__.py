"""What every torch stage runs on: device and precision (device.py), DataLoader workers and quiet interrupts
(workers.py). Below extract and finetune, which both use it and never each other."""
