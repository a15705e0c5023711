"""Training scripts that show the center loss doing its job end to end.

    python -m centerloss_ext.train.mnist   (console: centerloss-mnist)   LeNet++ on
        Fashion-MNIST / MNIST: the paper's 2-D feature plots, k-NN and nearest-center
        accuracy; `make demo` runs it.
    python -m centerloss_ext.train.faces   (console: centerloss-faces)   face
        identification/verification on an ImageFolder tree: train, eval, embed, identify,
        verify (LFW pairs.txt, insightface .bin), split, clean.
    python -m centerloss_ext.train.openset (console: centerloss-openset) softmax only vs
        center loss on Fashion-MNIST classes held out of training (`make openset`).

One folder per job, and a small core they share. Only a job's ``cli`` parses a command
line (and checks the optional packages first); everything else takes plain parameters,
an options dataclass, or the run's context (``Run``: what a run's epochs work on). A job
never imports another job's command line; openset reuses mnist's data, recipe and
training step.

    core/
      errors      TrainingError, DataError, NonFiniteLossError, Interrupted, first_line
      cli         the optional-packages check (require), run_cli (one-line errors, Ctrl-C
                  and the resume command), HelpFormatter, the argparse value types
      runtime     seeding, --device resolution
      files       output folders (--overwrite, no empty folder left, the --out lock),
                  the one atomic-write path, bounded checkpoint loading
      loop        the training skeleton: RunningStats (on-device statistics, one host
                  read-back per log interval), resume, checkpoint_state, run_record
      metrics     feature measures: k-NN / nearest-center accuracy, intra/inter,
                  verification
      plots       feature scatter with centers, curves, GIF, ROC (matplotlib, Agg backend)
      workers     loader workers that ignore Ctrl-C; started/stopped with it held back
      ddp         torchrun: process group, DDP wrapping, rank-0 duties, cross-rank checks
    mnist/        centerloss-mnist
      data        Fashion-MNIST / MNIST: the IDX reader, torchvision fallback
      model       LeNet++
      recipe      MnistOptions and LeNet++'s recipe: network, center loss, optimizers,
                  schedule, augmentation, --amp
      train       train_epoch (mnist, openset and the λ/α sweep), the test-set measures,
                  the run
      cli         the command line
    faces/        centerloss-faces
      data        identity folders (val/ uses train/'s labels), images, loaders
      model       FaceNet and its heads (softmax, CosFace, ArcFace), Runtime (device,
                  batch, workers, amp), checkpoint loading, --init's backbone start
      train       `train`: TrainOptions, train_one_epoch, train()
      evaluate    `eval` and the val/ evaluation: EvalOptions, evaluate(), eval_checkpoint()
      enroll      `embed` / `identify`: embeddings files, templates
      pairs       verification sets: pairs.txt and .bin readers (a pickle that runs
                  nothing), the pairs' images, train --verify's NAME=FILE[:IMAGES]
      verify      `verify` and train --verify: scores, the 10-fold protocol, scores.csv
      split       `split`: split_identity_folder, every image decoded once (report, --strict)
      clean       `clean`: angles to robust identity centers, Otsu's cut, a cleaned copy
      synthetic   generated face-like identity trees for tests and measurements, with
                  label noise and outliers on request (noise.json)
      cli         the command line, nothing else
    openset/      centerloss-openset
      protocol    class splits, training per split and method, held-out measures, summary,
                  the run
      cli         the command line
    synthetic     `python -m centerloss_ext.train.synthetic`: runs faces.synthetic

Nothing here is imported by `import centerloss_ext`, so the package itself stays light
(no matplotlib or scikit-learn at import).
"""
