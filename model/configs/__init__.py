"""Model configs kept as data (YAML), shipped as package data."""
from pathlib import Path

CONFIG_DIR = Path(__file__).parent
