"""centerloss-faces: face identification and verification with softmax + λ·center loss
on an ImageFolder tree (DIR/train, DIR/val).

    data       identity folders (val/ labelled with train/'s numbering), images, loaders
    model      FaceNet, Runtime (device, batch, workers, amp), checkpoint loading
    train      `train`: TrainOptions, train_one_epoch, train()
    evaluate   `eval` and the val/ evaluation: EvalOptions, evaluate(), eval_checkpoint()
    enroll     `embed` / `identify`: embeddings files, templates, the --far threshold
    split      `split`: one folder per identity -> train/, val/
    synthetic  a tiny generated face-like identity tree for tests and smoke runs
    cli        the command line, nothing else; `python -m centerloss_ext.train.faces`
"""
