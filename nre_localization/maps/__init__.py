"""Map file format, builder, triangulation and retrieval."""
