"""Discord: adapter, slash commands, conversions, poster, API base seam."""
