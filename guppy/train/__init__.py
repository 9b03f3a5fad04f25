"""Training: the loop knows nothing about recording; observers plug in as callbacks.

    trainer.py      Trainer, start_run, `guppy-train`
    callbacks.py    the Callback protocol and the TrainView observers receive
    distributed.py  several processes under torchrun
    sweep.py        `guppy-sweep`: a grid of recorded runs
"""
