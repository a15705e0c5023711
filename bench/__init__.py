"""The benchmark of centerloss_ext against plain PyTorch and the distance-matrix formulation.

Run ``python bench/compare.py --help``; figures are in bench/RESULTS.md.
"""
