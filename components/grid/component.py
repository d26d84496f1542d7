"""KFP wrapper of the grid step."""


from kfp import dsl

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def grid(grid: str) -> list[dict]:
    """Expand the experiment grid into the candidate list."""
    from medkfp.components.grid.logic import expand_grid

    return expand_grid(grid)
