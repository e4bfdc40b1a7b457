"""Planning a run before paying for it: how long to train, and whether the step fits a card.

The command is `python -m jaxgpt.plan` (__main__.py); a layer around the core.
"""
