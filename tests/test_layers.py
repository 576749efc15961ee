"""The package's layers (README, Layout): each module imports only its own layer or the ones
below, no import cycles (imports inside functions count), no command is imported by anything,
and the package never imports the preparation scripts (data/) or the configs (configs/)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = 'reenact_jax'

# Lowest first. A new module must be placed here, or this test fails.
LAYERS = {
  'core': (
    'face_topology',
    'geometry',
    'warp',
    'losses',
    'metrics',
    'expressions',
    'motion',
    'models',
    'models.layers',
    'models.encoder',
    'models.flow',
    'models.projection',
    'models.renderer',
    'models.inpainter',
    'models.fusion',
    'models.generator',
    'models.discriminator',
    'models.vgg',
  ),
  'data_and_media': (
    'media',
    'crops',
    'face',
    'occlusion',
    'records',
    'tfds_frames',
    'dataset_layouts',
    'augmentation',
    'synthetic',
    'preparation',
    'preparation_beam',
    'bundled',
    'exported',
  ),
  'training_and_inference': (
    'cli',
    'preparation_flags',
    'workdir',
    'distributed',
    'sharding',
    'train_state',
    'perceptual',
    'vgg_conversion',
    'lpips',
    'steps',
    'checkpointing',
    'input_pipeline',
    'inference',
    'evaluation',
    'trainer',
    'reenactment',
    'jobs',
    'exporter',
    'step_profile',
    'benchmarks',
    'demo_pipeline',
    'web_app',
  ),
  'commands': (
    'train',
    'evaluate',
    'reenact',
    'export',
    'benchmark',
    'demo',
    'convert_vgg',
    'app',
  ),
}
LAYER_OF = {module: index for index, names in enumerate(LAYERS.values()) for module in names}
COMMANDS = set(LAYERS['commands'])


def _module_name(path: pathlib.Path) -> str:
  relative = path.relative_to(ROOT / PACKAGE).with_suffix('')
  parts = relative.parts[:-1] if relative.name == '__init__' else relative.parts
  return '.'.join(parts)


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
  """Package modules (names relative to the package) and top-level 'data'/'configs' imported
  anywhere in the file, inside functions too."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # 'from reenact_jax.models import layers' imports the module models.layers;
      # 'from reenact_jax.models import Generator' imports the package models.
      prefix = node.module[len(PACKAGE) :].lstrip('.')
      in_package = node.module == PACKAGE or node.module.startswith(PACKAGE + '.')
      names = [
        f'{node.module}.{alias.name}'
        if in_package and f'{prefix}.{alias.name}'.lstrip('.') in known
        else node.module
        for alias in node.names
      ]
    else:
      continue
    for name in names:
      top = name.split('.')[0]
      if top in ('data', 'configs'):
        found.add(top)
      elif top == PACKAGE and name != PACKAGE:
        relative = name[len(PACKAGE) + 1 :]
        # 'from reenact_jax.models import vgg' names a module; '... import Generator' does not.
        while relative and relative not in known:
          relative = relative.rpartition('.')[0]
        if relative:
          found.add(relative)
  return found


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
  files = {_module_name(path): path for path in sorted((root / PACKAGE).rglob('*.py'))}
  known = set(files)
  return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
  problems = []
  for module, imports in sorted(graph.items()):
    if module == '':  # reenact_jax/__init__.py
      continue
    if module not in LAYER_OF:
      problems.append(f'{module} is in no layer: add it to LAYERS in tests/test_layers.py')
      continue
    for target in sorted(imports):
      if target in ('data', 'configs'):
        problems.append(f'{module} imports {target}/ (the package never imports it)')
      elif target in COMMANDS:
        problems.append(f'{module} imports the command {target} (commands are imported by nothing)')
      elif LAYER_OF.get(target, -1) > LAYER_OF[module]:
        layer, target_layer = (list(LAYERS)[LAYER_OF[m]] for m in (module, target))
        problems.append(f'{module} ({layer}) imports {target} ({target_layer}), a higher layer')
  return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every import cycle found by depth-first search, each as a closed path."""
  found, state, stack = [], {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if target not in graph:
        continue
      if state.get(target) == 'open':
        found.append(stack[stack.index(target) :] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return found


def test_every_module_imports_only_its_layer_or_below():
  assert layer_violations(import_graph()) == []


def test_no_import_cycles():
  assert cycles(import_graph()) == []


def test_tests_and_scripts_import_no_command():
  # Commands define absl flags at import: two in one process would collide. Tests run them as
  # programs (tests/helpers.py run_command).
  known = set(import_graph())
  for folder in ('tests', 'data', 'launch'):
    for path in sorted((ROOT / folder).rglob('*.py')):
      imported = imported_modules(path, known) & COMMANDS
      assert not imported, f'{path.relative_to(ROOT)} imports the command(s) {sorted(imported)}'


def test_the_checks_catch_an_upward_import_and_a_cycle():
  graph = {'geometry': {'trainer'}, 'trainer': {'geometry'}, 'reenact': set()}
  assert any('higher layer' in problem for problem in layer_violations(graph))
  assert cycles(graph) == [['geometry', 'trainer', 'geometry']]
  expected = ['steps imports data/ (the package never imports it)']
  assert layer_violations({'steps': {'data'}}) == expected


@pytest.mark.parametrize('source', ['import reenact_jax.trainer', 'from reenact_jax import train'])
def test_imports_inside_functions_count(tmp_path, source):
  path = tmp_path / 'module.py'
  path.write_text(f'def f():\n  {source}\n')
  found = imported_modules(path, set(LAYER_OF))
  assert found & {'trainer', 'train'}
