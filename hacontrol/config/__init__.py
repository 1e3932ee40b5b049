"""Configuration: one TOML file loaded into frozen typed objects, refused whole when anything is wrong."""

from hacontrol.config.load import DEFAULT_PATH, ConfigError, from_dict, load, loads
from hacontrol.config.schema import Config, Secret

__all__ = ["DEFAULT_PATH", "Config", "ConfigError", "Secret", "from_dict", "load", "loads"]
