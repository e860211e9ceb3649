"""Real test networks built from Linux network namespaces (see ``netns``). No Django here."""
