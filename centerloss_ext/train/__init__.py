"""Training scripts that show the center loss doing its job end to end.

    python -m centerloss_ext.train.mnist   (console: centerloss-mnist)   LeNet++ on
        Fashion-MNIST / MNIST: the paper's 2-D feature plots, k-NN and nearest-center
        accuracy; `make demo` runs it.
    python -m centerloss_ext.train.faces   (console: centerloss-faces)   face
        identification/verification on an ImageFolder tree: train, eval, embed, identify,
        split.
    python -m centerloss_ext.train.openset (console: centerloss-openset) softmax only vs
        center loss on Fashion-MNIST classes held out of training (`make openset`).

One module per job; only the command-line modules (mnist, faces, openset, synthetic) parse
command lines, everything else takes plain parameters or small dataclasses:
    faces          the centerloss-faces command line, nothing else
    faces_train    `train`: TrainOptions, train_one_epoch, train()
    faces_eval     `eval` and the val/ evaluation: EvalOptions, evaluate(), eval_checkpoint()
    faces_enroll   `embed` / `identify`: embed_images, embeddings files, templates
    faces_split    `split`: split_identity_folder
    faces_model    FaceNet, Runtime (device, batch, workers, amp), checkpoint loading
    mnist          centerloss-mnist: MnistOptions and the LeNet++ run
    mnist_recipe   LeNet++'s recipe: network, center loss, optimizers, schedule, --amp
    mnist_train    one training epoch of that recipe (mnist, openset and the λ/α sweep)
    openset        centerloss-openset: the command line and metrics.json
    openset_eval   class splits, training per split and method, held-out measures
    loop           the shared skeleton: RunningStats (on-device statistics, one host
                   read-back per log interval), resume, checkpoint_state, run_record
    common         errors, seeding, devices, atomic writes, the CLI's error handling
    models         LeNet++
    idx            Fashion-MNIST / MNIST: the IDX reader, torchvision fallback
    folders        identity folders (val/ uses train/'s labels), images, loaders
    workers        loader workers that ignore Ctrl-C; started/stopped with it held back
    evaluate       feature measures: k-NN / nearest-center accuracy, intra/inter, verification
    plots          feature scatter with centers, curves, GIF, ROC (matplotlib, Agg backend)
    synthetic      a tiny generated face-like ImageFolder for tests and smoke runs
    ddp            torchrun: process group, DDP wrapping, rank-0 duties, cross-rank checks

Nothing here is imported by `import centerloss_ext`, so the package itself stays light
(no matplotlib or scikit-learn at import).
"""
