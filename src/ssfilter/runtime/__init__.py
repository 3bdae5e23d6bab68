"""Where and how the work runs: device choice, seeding, multi-process (``torchrun``) helpers."""
