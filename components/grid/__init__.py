"""Grid: expand the experiment grid (name or JSON) into the candidate list the pipeline fans out over."""
