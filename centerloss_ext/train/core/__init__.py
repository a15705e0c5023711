"""What every training job shares, one module per concern:

    errors    TrainingError and its kinds, Interrupted, first_line
    cli       the optional-packages check, run_cli (one-line errors, Ctrl-C), the help
              layout and the argparse value types
    runtime   seeding, --device resolution
    files     output folders (--overwrite, no empty folder left), atomic checkpoint and
              JSON writes, checkpoint loading
    loop      the training skeleton: RunningStats, resume, checkpoint_state, run_record
    metrics   feature measures: k-NN / nearest-center accuracy, intra/inter, verification
    plots     feature scatter, curves, GIF, ROC (matplotlib, Agg backend)
    workers   loader workers that survive a Ctrl-C whole
    ddp       torchrun: process group, DDP wrapping, rank-0 duties, cross-rank checks

Nothing here imports a job.
"""
