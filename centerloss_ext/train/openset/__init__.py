"""centerloss-openset: softmax only vs center loss on Fashion-MNIST classes held out of
training (docs/openset.md).

    protocol  class splits, training on the seen classes (centerloss-mnist's recipe and
              training step), the held-out measures, the summary, the run
    cli       the command line (parse_args, main); `python -m centerloss_ext.train.openset`
"""
