"""Package layout (see README, "Import names").

The sam2 wheel installs a top-level package called `training`, and `model` /
`evaluation` are just as generic, so the folders model/, training/ and
evaluation/ are installed under our one import root:

    sama_agent/  -> sama_agent
    model/       -> sama_agent.model
    training/    -> sama_agent.training
    evaluation/  -> sama_agent.evaluation
"""
from setuptools import find_packages, setup

ROOTS = {
    "sama_agent": "sama_agent",
    "sama_agent.model": "model",
    "sama_agent.training": "training",
    "sama_agent.evaluation": "evaluation",
}


def _packages():
    names = []
    for root, folder in ROOTS.items():
        names.append(root)
        names += [f"{root}.{sub}" for sub in find_packages(folder)]
    return names


setup(packages=_packages(), package_dir=ROOTS)
