"""Tools, a wing beside the method: what is counted or looked up rather than run.

    memory      byte counts of a run (ZeroScope, Wan2.1-1.3B or any model of either family), made on the meta
                device without the weights
    passes      FLOPs of each denoiser pass kind, the passes a recipe makes, and the time ratio they predict
    meta        models of either family built on the meta device from their configs (`ModelSpec`)
    zeroscope   ZeroScope's component configs, noise schedule and size, in one place
    wan         Wan2.1-T2V-1.3B's component configs, scheduler and size, in one place
"""
