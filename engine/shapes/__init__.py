"""The `shapes` world: a seeded generator whose truth is known, a judge, and the recipe that trains
the world's SD 1.5-layout models from nothing (`python -m engine.shapes.build`)."""
