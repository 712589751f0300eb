"""Tools, a wing beside the method: what is counted or looked up rather than run.

    memory      byte counts of a run at ZeroScope scale, made on the meta device without the weights
    zeroscope   ZeroScope's component configs, noise schedule and size, in one place
"""
