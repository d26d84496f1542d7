"""Grid: expand the experiment grid (name or JSON) into the complete candidates the pipeline fans out over."""
