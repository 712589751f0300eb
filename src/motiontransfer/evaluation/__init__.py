"""Evaluation, a wing beside the method: metrics and benchmarks.

    metrics     motion fidelity (paper Sec. 5) and CLIP text fidelity
    suite       the paper's comparison on a suite of cases (Fig. 8: motion against text fidelity)
    speed       the speed benchmark: the reference recipe against ours, each run in a fresh process
    suites/     the shipped suites (YAML)
"""
