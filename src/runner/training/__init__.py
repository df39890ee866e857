"""The pieces a run trains with (runner.train.Trainer puts them together)."""
