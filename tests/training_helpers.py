"""Shared by the tests that stop a training in process: a progress callback that presses Ctrl-C."""


class InterruptAt:
    """Progress callback that presses Ctrl-C in the middle of a given epoch, at a given batch."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_batch(self, event):
        if (event.epoch, event.batch) == (self.epoch, self.batch):
            raise KeyboardInterrupt
