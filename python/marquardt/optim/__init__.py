"""The LM optimizer and its fitting loop."""
