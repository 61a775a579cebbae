"""More image attacks (the zoo of the papers) and datasets; each module registers itself."""
