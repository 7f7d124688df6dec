"""YAML from files this process did not write (a run's config.yaml, an experiment, --set values),
read with ``safe_load``'s types and a bound on what the file may expand to.

    data = load_yaml(path.read_text(), str(path))    # or UnreadableYAML, one line naming the file
"""

from __future__ import annotations

from typing import Any

import yaml


class UnreadableYAML(ValueError):
    """Text that is not YAML, or YAML that would expand beyond what a config can hold."""


# A training config holds a few hundred values (the shipped ones at most 205), but a YAML alias
# (*name) stands for the whole value it names: six levels of ten aliases in a 355-byte file stand
# for millions, and everything after the parser (the typed config, --print-config, error
# messages) walks them one by one. 10 000 values resolve and print in well under a second.
MAX_YAML_VALUES = 10_000


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, or a one-line UnreadableYAML that starts with ``source``: for text that
    is not YAML, nests too deep, holds an alias inside the value it names, or stands for more than
    ``MAX_YAML_VALUES`` values once its aliases are expanded. Measured before anything is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context
        raise UnreadableYAML(f"{source}{where}: not valid YAML: {problem}") from error
    except yaml.YAMLError as error:
        raise UnreadableYAML(f"{source}: not valid YAML: {' '.join(str(error).split())}") from error
    except RecursionError:
        raise UnreadableYAML(f"{source}: nested too deeply to be a config") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    # An alias is the node it names, shared: each distinct node is sized once, so a file that
    # stands for billions of values is measured in as many steps as it has nodes.
    sizes: dict[int, int | None] = {}  # None: being sized, an ancestor of the node at hand

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise UnreadableYAML(f"{source}: an alias (*name) is used inside the value it names, which never ends")
            return sizes[id(node)]
        sizes[id(node)] = None
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise UnreadableYAML(
                    f"{source}: its aliases (*name) expand it to more than {MAX_YAML_VALUES:,} values; "
                    "a config holds a few hundred"
                )
        sizes[id(node)] = total
        return total

    size(root)
