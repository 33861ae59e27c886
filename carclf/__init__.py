"""carclf: Stanford Cars classification with eight CNNs, from a resumable notebook.

docs/architecture.md maps the modules and the stages; ``carclf.workflow`` holds the notebook's steps.
"""

__version__ = "0.2.0.dev0"
