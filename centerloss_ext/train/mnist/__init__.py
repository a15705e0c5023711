"""centerloss-mnist: LeNet++ with softmax + λ·center loss on Fashion-MNIST or MNIST.

data      Fashion-MNIST / MNIST as in-memory tensors: the IDX reader, torchvision's
          loader as the fallback
model     LeNet++
recipe    MnistOptions and the recipe built from them: network, center loss,
          optimizers, learning-rate schedule, augmentation, --amp
train     train_epoch (shared with the open-set protocol and the λ/α sweep), the
          test-set measures, the run
cli       the command line (parse_args, main); `python -m centerloss_ext.train.mnist`
"""
