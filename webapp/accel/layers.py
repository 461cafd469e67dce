"""Swapping a model's submodules for faster ones, in place."""


def replace_layers(model, replacement):
    """Swap, in place, every submodule for which `replacement(module)` gives another; returns {name: new module}."""
    replaced = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is not None:
                setattr(parent, name, new)
                replaced[f"{parent_name}.{name}".lstrip(".")] = new
    return replaced
