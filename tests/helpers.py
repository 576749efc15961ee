"""Small helpers shared by the tests."""

from configs import tiny


def config_with(base=tiny, **overrides):
  """base.get_config() with dotted-key overrides: config_with(**{'train.total_steps': 3})."""
  config = base.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
