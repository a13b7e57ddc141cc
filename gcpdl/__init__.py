"""gcpdl: a GPU VM with JupyterLab and your dataset, on Google Cloud, in one command."""

__version__ = "0.1.0"
