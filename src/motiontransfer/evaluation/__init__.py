"""Evaluation, a wing beside the method: metrics and benchmarks.

    metrics     motion fidelity (paper Sec. 5) and CLIP text fidelity
    suite       the paper's comparison on a suite of cases (Fig. 8: motion against text fidelity)
    suites/     the shipped suites (YAML)
"""
