"""Training scripts that show the center loss doing its job end to end.

    python -m centerloss_ext.train.mnist   (console: centerloss-mnist)   LeNet++ on
        Fashion-MNIST / MNIST: the paper's 2-D feature plots, k-NN and nearest-center
        accuracy; `make demo` runs it.
    python -m centerloss_ext.train.faces   (console: centerloss-faces)   face
        identification/verification on an ImageFolder tree: train, eval, embed, identify.

Helpers, importable on their own:
    models     LeNet++ and the face backbones
    data       IDX reader (Fashion-MNIST/MNIST) and identity folders (val/ uses train/'s labels)
    evaluate   feature extraction, k-NN / nearest-center accuracy, intra/inter ratio, verification
    plots      feature scatter with centers, curves, GIF, ROC (matplotlib, Agg backend)
    common     seeding, devices, checkpoints, the non-finite-loss guard
    synthetic  a tiny generated face-like ImageFolder for tests and smoke runs
    ddp        torchrun: process group, DDP wrapping, rank-0 duties, cross-rank checks

Nothing here is imported by `import centerloss_ext`, so the package itself stays light
(no matplotlib or scikit-learn at import).
"""
