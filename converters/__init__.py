"""Everything that turns a checkpoint into another checkpoint, and says what a checkpoint is.

Converters never import the engine or the app.
"""
