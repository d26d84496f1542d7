"""KFP wrappers of the grid step: the complete candidates, and the run's image size.

Two components rather than one with two outputs: kfp.local's ParallelFor only iterates over
a task's single `Output`.
"""

from kfp import dsl

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def grid(
    grid: str,
    dataset: str,
    epochs: int,
    image_size: int,
    weights: str,
    freeze_backbone: bool,
) -> list[dict]:
    """Expand the experiment grid into complete candidates (run-level settings applied)."""
    from medkfp.components.grid.logic import expand_grid

    return expand_grid(grid, dataset, epochs, image_size, weights, freeze_backbone)


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def grid_image_size(grid: str, dataset: str, image_size: int) -> int:
    """The size preprocessing writes: image_size if > 0, else the grid's (paper: 224/256), else 64."""
    from medkfp.components.grid.logic import run_image_size_of

    return run_image_size_of(grid, dataset, image_size)
