"""What recipes need from Python beyond the stage commands: the summary of a run."""
